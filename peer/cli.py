"""`hivemind-peer`: the volunteer's command line.

    hivemind-peer dht [--host H] [--port N] [--initial-peers MADDR ...] [--identity PATH]
        a standalone DHT node (a bootstrap or relay point for a swarm); prints its multiaddrs
    hivemind-peer serve-experts --expert-pattern 'ffn.[0:4].[0:4]' --expert-cls ffn [...]
        host Mixture-of-Experts experts for the swarm (peer.moe.cli)

Subcommands print to the terminal with `rich`; everything else logs through `logging`.
"""

from __future__ import annotations

import logging
import signal
import threading
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
    while not stop.wait(interval):
        dht_node = node.node
        if dht_node is None:
            return
        logger.info(
            "routing table: %d peers; storage: %d entries (%d bytes); cache: %d entries; connections: %d",
            len(dht_node.routing_table),
            len(dht_node.storage),
            dht_node.storage.total_bytes,
            len(dht_node.cache),
            len(dht_node.p2p.pool.all()),
        )


def _register_subsystem_commands() -> None:
    from peer.moe.cli import serve_experts

    app.command("serve-experts")(serve_experts)


_register_subsystem_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
