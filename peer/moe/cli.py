"""`hivemind-peer serve-experts`: host a grid of experts on this machine until interrupted.

    hivemind-peer serve-experts --expert-pattern "ffn.[0:4].[0:4]" --expert-cls ffn --hidden-dim 1024 \\
        --initial-peers /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW... --checkpoint-dir ./experts

It prints the experts it serves and the addresses to reach it, then keeps one live throughput line
(forward and backward samples/s over the last interval). SIGINT or SIGTERM stops it cleanly: the
server saves a last checkpoint and leaves the network. `app` is a Typer app with this one command;
`peer/cli.py` mounts `serve_experts` as the `serve-experts` subcommand.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from peer.dht.dht import DHT
from peer.moe.runtime import BatchingConfig
from peer.moe.server import Server, ServerConfig, make_backends

app = typer.Typer(add_completion=False, help="Host Mixture-of-Experts experts for a swarm.")


@app.command("serve-experts")
def serve_experts(
    expert_pattern: Annotated[
        str | None, typer.Option(help="Grid of uids to serve, e.g. 'ffn.[0:4].[0:16]'.")
    ] = None,
    num_experts: Annotated[
        int | None, typer.Option(help="Serve this many experts '<prefix>.0' .. '<prefix>.N-1' instead.")
    ] = None,
    expert_prefix: Annotated[str, typer.Option(help="The uid prefix used with --num-experts.")] = "expert",
    expert_cls: Annotated[
        str, typer.Option(help="Registered expert class: ffn, transformer, nop, ...")
    ] = "ffn",
    hidden_dim: Annotated[int, typer.Option(min=1, help="Hidden size of every expert.")] = 1024,
    min_batch_size: Annotated[int, typer.Option(min=1, help="Rows a batch waits for.")] = 1,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most rows in one batch.")] = 4096,
    batch_timeout: Annotated[float, typer.Option(min=0, help="Longest wait (s) for a batch to fill.")] = 0.01,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Restore from and save checkpoints here.")
    ] = None,
    initial_peers: Annotated[list[str] | None, typer.Option(help="DHT peers to join (repeatable).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 0,
    identity: Annotated[Path | None, typer.Option(help="Identity key file (created if missing).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate of every expert.")] = 1e-3,
    stats_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between throughput updates.")] = 5.0,
) -> None:
    """Serve experts: answer forward/backward calls, declare them in the DHT, checkpoint them."""
    console = Console(highlight=False)
    if (expert_pattern is None) == (num_experts is None):
        raise typer.BadParameter("pass exactly one of --expert-pattern or --num-experts")
    pattern = expert_pattern or f"{expert_prefix}.[0:{num_experts}]"
    try:
        config = ServerConfig(
            batching=BatchingConfig(min_batch_size, max_batch_size, batch_timeout),
            device=device,
            checkpoint_dir=checkpoint_dir,
        )
        backends = make_backends(
            expert_pattern=pattern,
            expert_cls=expert_cls,
            hidden_dim=hidden_dim,
            config=config,
            optimizer=lambda params: torch.optim.Adam(params, lr=learning_rate),
        )
    except (ValueError, RuntimeError) as e:
        raise typer.BadParameter(str(e)) from None
    listen = f"/ip6/{host}/tcp/{port}" if ":" in host else f"/ip4/{host}/tcp/{port}"
    dht = DHT(initial_peers or [], host_maddrs=[listen], identity_path=identity)
    server = Server(backends, dht=dht, config=config, owns_network=True)
    server.start()
    _print_banner(console, server, pattern, expert_cls, hidden_dim, device)
    stop = threading.Event()
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: stop.set())}
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _report_throughput(console, server, stop, stats_interval)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        console.print("shutting down: saving checkpoints and leaving the swarm")
        server.shutdown()
        console.print("stopped")


def _print_banner(
    console: Console, server: Server, pattern: str, expert_cls: str, hidden: int, device: str
) -> None:
    table = Table(title="serving experts", show_header=True)
    for column in ("pattern", "experts", "class", "hidden", "device", "checkpoints"):
        table.add_column(column)
    table.add_row(
        Text(pattern),
        str(len(server.backends)),
        expert_cls,
        str(hidden),
        device,
        str(server.config.checkpoint_dir),
    )
    console.print(table)
    console.print(f"peer id {server.p2p.peer_id}")
    for maddr in server.p2p.get_visible_maddrs():
        console.print(Text(f"listening on {maddr}"), soft_wrap=True)


def _report_throughput(console: Console, server: Server, stop: threading.Event, interval: float) -> None:
    def totals() -> tuple[int, int]:
        stats = server.stats
        forward = sum(s.examples for name, s in stats.items() if name.endswith("_forward"))
        backward = sum(s.examples for name, s in stats.items() if name.endswith("_backward"))
        return forward, backward

    last, last_time = totals(), time.monotonic()

    def line() -> Text:
        nonlocal last, last_time
        now_totals, now = totals(), time.monotonic()
        elapsed = max(now - last_time, 1e-9)
        fwd, bwd = ((a - b) / elapsed for a, b in zip(now_totals, last, strict=True))
        last, last_time = now_totals, now
        return Text(
            f"throughput: forward {fwd:.1f} samples/s, backward {bwd:.1f} samples/s "
            f"(total {now_totals[0]} forward, {now_totals[1]} backward)"
        )

    if console.is_terminal:
        with Live(line(), console=console, refresh_per_second=4) as live:
            while not stop.wait(interval):
                live.update(line())
    else:
        while not stop.wait(interval):
            console.print(line(), soft_wrap=True)


__all__ = ["app", "serve_experts"]
