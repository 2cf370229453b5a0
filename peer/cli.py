"""`hivemind-peer`: the volunteer's command line.

    hivemind-peer dht [--host H] [--port N] [--initial-peers MADDR ...] [--identity PATH]
        a standalone DHT node (a bootstrap or relay point for a swarm); prints its multiaddrs
    hivemind-peer serve-experts --expert-pattern 'ffn.[0:4].[0:4]' --expert-cls ffn [...]
        host Mixture-of-Experts experts for the swarm (peer.moe.cli)

Subcommands print to the terminal with `rich`; everything else logs through `logging`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from peer.errors import PeerError

app = typer.Typer(
    name="hivemind-peer",
    help="Join decentralized deep-learning runs, or host the infrastructure they need.",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
logger = logging.getLogger("peer.cli")


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Join decentralized deep-learning runs, or host the infrastructure they need."""
    if version:
        from importlib.metadata import version as package_version

        print(f"hivemind-peer {package_version('hivemind-platform')}")
        raise typer.Exit()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _wait_for_signal() -> str:
    """Block until SIGINT or SIGTERM; returns the signal's name."""
    received: list[str] = []
    done = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        done.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return received[0]


@app.command()
def dht(
    host: Annotated[
        str, typer.Option(help="Interface to listen on; 0.0.0.0 for every IPv4 interface.")
    ] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port to listen on; 0 picks a free one.")
    ] = 0,
    initial_peers: Annotated[
        list[str] | None,
        typer.Option(
            "--initial-peers", help="Multiaddrs of DHT peers to join (repeat the option for several)."
        ),
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            help="Key file that keeps this node's PeerID across restarts (created if missing, mode 0600)."
        ),
    ] = None,
    announce: Annotated[
        list[str] | None,
        typer.Option(
            "--announce", help="Multiaddr to advertise instead of the listening address (e.g. a public IP)."
        ),
    ] = None,
    stats_interval: Annotated[
        float, typer.Option(min=1.0, help="Seconds between log lines with routing-table and storage sizes.")
    ] = 60.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Run a standalone DHT node: the bootstrap point other peers pass as --initial-peers.

    It prints the multiaddrs to share, logs the sizes of its routing table and storage every
    --stats-interval seconds, and shuts down cleanly on Ctrl-C or SIGTERM.

    Example: hivemind-peer dht --port 31337 --identity ~/.hivemind/bootstrap.key
    """
    from peer.dht import DHT, DHTConfig

    _setup_logging(verbose)
    config = DHTConfig(announce_maddrs=tuple(announce or ()))
    maddr = f"/ip4/{host}/tcp/{port}" if ":" not in host else f"/ip6/{host}/tcp/{port}"
    try:
        node = DHT(
            initial_peers=initial_peers or (), host_maddrs=[maddr], identity_path=identity, config=config
        )
    except (PeerError, ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"DHT node [bold]{node.peer_id}[/bold] is running. Other peers can join with:")
    for address in node.get_visible_maddrs():
        print(f"--initial-peers {address}", flush=True)
    stop = threading.Event()
    reporter = threading.Thread(target=_report_sizes, args=(node, stats_interval, stop), daemon=True)
    reporter.start()
    name = _wait_for_signal()
    stop.set()
    console.print(f"received {name}; shutting down")
    node.shutdown()
    console.print("DHT node stopped")


def _report_sizes(node, interval: float, stop: threading.Event) -> None:
    async def sizes(_dht, dht_node) -> tuple[int, int, int, int, int]:  # read on the loop that owns them
        return (
            len(dht_node.routing_table),
            len(dht_node.storage),
            dht_node.storage.total_bytes,
            len(dht_node.cache),
            len(dht_node.p2p.pool.all()),
        )

    while not stop.wait(interval):
        try:
            counts = node.run_coroutine(sizes, timeout=10)
        except (PeerError, TimeoutError):
            return
        logger.info(
            "routing table: %d peers; storage: %d entries (%d bytes); cache: %d entries; connections: %d",
            *counts,
        )


@app.command()
def join(
    run_url: Annotated[
        str, typer.Argument(help="The run page URL (http(s)://SITE/runs/SLUG), a manifest URL or file.")
    ],
    token: Annotated[
        str | None,
        typer.Option(
            envvar="HIVEMIND_TOKEN", help="Your API key from the run's site (runs that need tokens)."
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port to accept peers on; 0 picks one.")
    ] = 0,
    announce: Annotated[
        str | None, typer.Option(help="Multiaddr to advertise (e.g. your public IP).")
    ] = None,
    client_mode: Annotated[
        bool, typer.Option("--client-mode", help="Accept no connections (behind NAT): only dial out.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per local step.")] = 16,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many local steps.")] = None,
    identity: Annotated[
        Path | None, typer.Option(help="Key file for this peer's PeerID (default: in the data dir).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the dataset, identity and checkpoints live.")
    ] = None,
    no_experts: Annotated[
        bool, typer.Option("--no-experts", help="Mixture-of-Experts runs: train only, host no experts.")
    ] = False,
    experts_only: Annotated[
        bool,
        typer.Option("--experts-only", help="Mixture-of-Experts runs: host experts, do not train."),
    ] = False,
    num_experts: Annotated[
        int | None,
        typer.Option(min=1, help="Mixture-of-Experts runs: experts to host (default: an equal share)."),
    ] = None,
    offload_optimizer: Annotated[
        bool,
        typer.Option("--offload-optimizer", help="Keep the optimizer's state in CPU memory, not the GPU's."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Join a training run: fetch its manifest, catch up with the swarm, train and share your progress.

    In a Mixture-of-Experts run the peer also hosts a share of the run's experts (--no-experts: train
    only; --experts-only: host only). Ctrl-C leaves cleanly (saving a checkpoint); a second Ctrl-C
    forces the exit. Run the same command again to resume.
    Example: hivemind-peer join https://example.org/runs/tiny-gpt --token hms_...
    """
    from peer.runs.join import JoinOptions, Volunteer

    _setup_logging(verbose)
    _check_device(device)
    try:
        options = JoinOptions(
            run_url,
            token=token,
            port=port,
            announce=announce,
            client_mode=client_mode,
            device=device,
            batch_size=batch_size,
            max_steps=max_steps,
            identity=identity,
            data_dir=data_dir,
            no_experts=no_experts,
            experts_only=experts_only,
            num_experts=num_experts,
            offload_optimizer=offload_optimizer,
        )
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    volunteer = Volunteer(options)
    _prepare(volunteer)
    assert volunteer.manifest is not None
    _print_welcome(volunteer)
    _install_double_interrupt(volunteer)
    code = 0
    try:
        with _live_status(volunteer.manifest.slug) as show:
            if options.experts_only:
                volunteer.serve(on_tick=show)
            else:
                volunteer.train(on_step=show)
    except PeerError as e:
        console.print(f"[red]training stopped:[/red] {e}")
        code = 1
    finally:
        volunteer.shutdown()
    _print_farewell(volunteer)
    raise typer.Exit(code)


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            console.print(
                "[red]error:[/red] --device cuda was asked, but this machine has no usable CUDA GPU"
            )
            raise typer.Exit(2)


def _prepare(volunteer) -> None:
    """Everything before training; exit code 2 for a problem with what the user gave, 1 otherwise."""
    from peer.runs.join import USER_ERRORS

    try:
        volunteer.prepare()
    except (PeerError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        volunteer.shutdown()
        raise typer.Exit(2 if isinstance(e, USER_ERRORS) else 1) from None
    except KeyboardInterrupt:
        console.print("interrupted while joining; nothing was trained yet")
        volunteer.shutdown()
        raise typer.Exit(130) from None


def _print_welcome(volunteer) -> None:
    manifest = volunteer.manifest
    console.print(f"joined run [bold]{manifest.name or manifest.slug}[/bold] as peer {volunteer.dht.peer_id}")
    for address in volunteer.dht.get_visible_maddrs():
        console.print(f"  reachable at {address}", soft_wrap=True)
    if volunteer.expert_host is not None:
        hosted = volunteer.expert_host.uids
        console.print(f"hosting {len(hosted)} of the run's {len(volunteer.expert_host.grid)} experts")


def _print_farewell(volunteer) -> None:
    status = volunteer.status
    if volunteer.options.experts_only:
        console.print(
            f"left the run after hosting {len(status.hosted_experts)} experts; "
            f"they served {status.expert_samples} samples"
        )
        return
    console.print(
        f"left the run after {status.local_steps} steps at epoch {status.epoch}; "
        f"contributed {status.my_samples} samples"
    )


def _install_double_interrupt(volunteer) -> None:
    def handler(signum: int, _frame: object) -> None:
        if volunteer.stop_requested:
            console.print("second interrupt: exiting now")
            os._exit(130)
        volunteer.stop_requested = True
        console.print("finishing the current step and leaving (press Ctrl-C again to force)")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _live_status(run: str):
    from rich.live import Live
    from rich.table import Table

    def render(status) -> Table:
        table = Table(title=f"run {run}", show_header=False, box=None)
        if status.grid_size:
            table.add_row("hosting experts", _experts_summary(status.hosted_experts, status.grid_size))
            table.add_row("expert samples served", str(status.expert_samples))
        if status.waiting:
            table.add_row("waiting", status.waiting[:100])
        if status.local_steps == 0 and status.grid_size and status.loss is None:
            return table  # hosting only (or not trained yet): the training rows would say nothing
        table.add_row("epoch", str(status.epoch))
        table.add_row("peers", str(status.peers))
        table.add_row("swarm samples/s", f"{status.swarm_samples_per_second:.1f}")
        table.add_row("loss", "-" if status.loss is None else f"{status.loss:.4f}")
        table.add_row("my contribution", f"{status.my_samples} samples in {status.local_steps} steps")
        eta = "-" if status.eta == float("inf") else f"{status.eta:.0f} s"
        table.add_row("next epoch in", eta)
        return table

    with Live(console=console, refresh_per_second=2, transient=False) as live:
        last = [0.0]

        def show(status) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5:
                last[0] = now
                live.update(render(status))

        yield show


def _experts_summary(uids: list[str], grid_size: int, shown: int = 6) -> str:
    listed = ", ".join(uids[:shown]) + (f", ... ({len(uids) - shown} more)" if len(uids) > shown else "")
    return f"{len(uids)} of {grid_size}: {listed}" if uids else f"none of {grid_size}"


@app.command()
def status(
    run_url: Annotated[str, typer.Argument(help="The run page URL, a manifest URL or file.")],
    token: Annotated[
        str | None, typer.Option(envvar="HIVEMIND_TOKEN", help="Your API key, for runs that need tokens.")
    ] = None,
) -> None:
    """Print the swarm's state (epoch, peers, speed, loss) read from the DHT."""
    from rich.table import Table

    from peer.dht import DHT
    from peer.net.identity import Identity
    from peer.optim import ProgressTracker, run_validators
    from peer.runs.join import JoinError, JoinOptions, Volunteer
    from peer.runs.manifest import ManifestError, load_manifest
    from peer.utils.loop import run_coroutine

    try:
        manifest = load_manifest(run_url)
        volunteer = Volunteer(JoinOptions(run_url, token))
        volunteer.manifest = manifest
        authorizer = volunteer._authorizer(Identity.generate()) if manifest.auth.mode == "token" else None
        if not manifest.initial_peers:
            raise JoinError("the manifest lists no initial peers to ask")
        node = DHT(
            initial_peers=manifest.initial_peers,
            client_mode=True,
            authorizer=authorizer,
            record_validators=run_validators(manifest.slug),
        )
    except (ManifestError, PeerError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    try:
        progress = run_coroutine(ProgressTracker(node, manifest.slug, manifest.target_batch_size).afetch())
    finally:
        node.shutdown()
    table = Table(
        title=f"{manifest.name or manifest.slug}: epoch {progress.epoch}, {progress.num_peers} peers, "
        f"{progress.samples_accumulated}/{manifest.target_batch_size} samples, "
        f"{progress.samples_per_second:.1f} samples/s"
    )
    for column in ("peer", "epoch", "samples", "samples/s", "loss"):
        table.add_column(column)
    for peer_id, record in sorted(progress.peers.items(), key=lambda item: str(item[0])):
        loss = "-" if record.loss is None else f"{record.loss:.4f}"
        table.add_row(
            peer_id.short(),
            str(record.epoch),
            str(record.samples_accumulated),
            f"{record.samples_per_second:.1f}",
            loss,
        )
    Console().print(table)


def _register_subsystem_commands() -> None:
    from peer.moe.cli import serve_experts

    app.command("serve-experts")(serve_experts)


_register_subsystem_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
