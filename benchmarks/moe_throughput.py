"""Remote expert throughput and latency against calling the same expert locally.

    .venv/bin/python benchmarks/moe_throughput.py [--clients 2] [--experts 16] [--hidden 1024]
                                                  [--batch 512] [--seconds 10] [--device cpu]

One server process hosts `--experts` `ffn` experts (hidden `--hidden`, Adam). `--clients` threads in
this process each call their own expert (round robin over the grid) with batches of `--batch` rows,
for `--seconds` per phase: forward only, then forward + backward. It prints samples/s and latency
p50/p99 of each phase, and the same expert's throughput when called locally in this run:

- "local, same work": `ExpertBackend.forward` / `.backward` in this process, i.e. exactly the work the
  server does (its backward recomputes the forward, so forward + backward costs ~3 forward passes on
  top of the forward call);
- "local training step": a plain forward + backward + optimizer step, with no recomputation.

Remote/local ratios are printed against both. It asserts nothing. The target on a 2-core machine is
remote forward + backward >= 70% of local throughput.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import threading
import time

import torch

from peer.moe import RemoteExpert, Server, ServerConfig
from peer.moe.runtime import BatchingConfig
from peer.moe.server import make_backends
from peer.net.p2p import P2P


def _serve(args: argparse.Namespace, maddr_queue: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    config = ServerConfig(
        batching=BatchingConfig(min_batch_size=1, max_batch_size=4 * args.batch, batch_timeout=0.001),
        device=args.device,
    )
    backends = make_backends(
        expert_pattern=f"ffn.[0:{args.experts}]", expert_cls="ffn", hidden_dim=args.hidden, config=config
    )
    p2p = P2P.create()
    server = Server(backends, p2p=p2p, config=config)
    server.start()
    maddr_queue.put(str(p2p.get_visible_maddrs()[0]))
    stop.wait()
    stats = server.stats
    batches = [s for name, s in stats.items() if s.batches]
    mean_rows = sum(s.examples for s in batches) / max(1, sum(s.batches for s in batches))
    busy = {
        kind: sum(s.busy_seconds for n, s in stats.items() if n.endswith(kind))
        / max(1, sum(s.batches for n, s in stats.items() if n.endswith(kind)))
        for kind in ("_forward", "_backward")
    }
    maddr_queue.put(
        f"server: mean batch {mean_rows:.0f} rows over {sum(s.batches for s in batches)} batches; "
        f"compute per batch {1000 * busy['_forward']:.0f} ms forward, "
        f"{1000 * busy['_backward']:.0f} ms backward"
    )
    server.shutdown()
    p2p.shutdown()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Meter:
    """Samples and seconds accumulated over interleaved rounds, plus per-call latencies."""

    def __init__(self) -> None:
        self.samples, self.seconds, self.latencies = 0, 0.0, []

    @property
    def rate(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def _remote_round(args, experts: list[RemoteExpert], backward: bool, seconds: float, meter: _Meter) -> None:
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(expert: RemoteExpert) -> None:
        x = torch.randn(args.batch, args.hidden, requires_grad=backward)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if backward:
                expert(x).sum().backward()
            else:
                with torch.no_grad():
                    expert(x)
            with lock:
                meter.latencies.append(time.perf_counter() - start)
                meter.samples += args.batch

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(expert,)) for expert in experts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meter.seconds += time.perf_counter() - started


def _local_round(args, backend, mode: str, seconds: float, meter: _Meter) -> None:
    x = torch.randn(args.batch, args.hidden)
    grad = torch.ones(args.batch, args.hidden)
    module, optimizer = backend.expert, backend.optimizer
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if mode == "train":  # a plain local training step
            module(x).backward(grad)
            optimizer.step()
            optimizer.zero_grad()
        else:  # exactly the server's work
            backend.forward(x)
            if mode == "both":
                backend.backward(x, grad)
        meter.samples += args.batch
    meter.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}")
    print(
        f"{args.experts} ffn experts, hidden {args.hidden}, batch {args.batch}, {args.clients} client threads"
    )

    context = mp.get_context("spawn")
    maddr_queue, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(args, maddr_queue, stop), daemon=True)
    server.start()
    maddr = maddr_queue.get(timeout=300)
    (backend,) = make_backends(["ffn.0"], expert_cls="ffn", hidden_dim=args.hidden).values()
    meters = {name: _Meter() for name in ("local_forward", "local_both", "local_train", "forward", "both")}
    p2p = P2P.create(host_maddrs=[])
    try:
        experts = [
            RemoteExpert(f"ffn.{i % args.experts}", maddr, p2p, forward_timeout=120, backward_timeout=120)
            for i in range(args.clients)
        ]
        for expert in experts:
            expert.info  # noqa: B018 - fetch the schemas (and connect) before timing
        _remote_round(args, experts, True, 0.5, _Meter())  # warm up both sides
        _local_round(args, backend, "both", 0.5, _Meter())
        # interleaved rounds, so that background load on a shared machine hits every phase alike
        per_round = args.seconds / args.rounds
        for _ in range(args.rounds):
            _local_round(args, backend, "forward", per_round, meters["local_forward"])
            _remote_round(args, experts, False, per_round, meters["forward"])
            _local_round(args, backend, "both", per_round, meters["local_both"])
            _remote_round(args, experts, True, per_round, meters["both"])
            _local_round(args, backend, "train", per_round, meters["local_train"])
    finally:
        p2p.shutdown()
        stop.set()
        summary = maddr_queue.get(timeout=300)
        server.join(300)
    local_forward, local_both, local_train = (
        meters[k].rate for k in ("local_forward", "local_both", "local_train")
    )
    remote_forward, remote_both = meters["forward"].rate, meters["both"].rate
    forward_latency, both_latency = meters["forward"].latencies, meters["both"].latencies

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * _percentile(values, q):.0f} ms"

    print(f"{'phase':<28}{'samples/s':>12}{'p50':>10}{'p99':>10}{'calls':>8}")
    print(f"{'local forward':<28}{local_forward:>12.0f}")
    print(f"{'local forward+backward':<28}{local_both:>12.0f}   (same work as the server)")
    print(f"{'local training step':<28}{local_train:>12.0f}   (forward+backward+step, no recompute)")
    print(
        f"{'remote forward':<28}{remote_forward:>12.0f}{ms(forward_latency, 0.5):>10}"
        f"{ms(forward_latency, 0.99):>10}{len(forward_latency):>8}"
    )
    print(
        f"{'remote forward+backward':<28}{remote_both:>12.0f}{ms(both_latency, 0.5):>10}"
        f"{ms(both_latency, 0.99):>10}{len(both_latency):>8}"
    )
    print(f"remote/local forward:                        {remote_forward / local_forward:.0%}")
    print(f"remote/local forward+backward (same work):   {remote_both / local_both:.0%}")
    print(f"remote/local forward+backward (training):    {remote_both / local_train:.0%}")
    print(summary)
    print(f"mean remote forward latency {1000 * statistics.fmean(forward_latency):.0f} ms")


if __name__ == "__main__":
    main()
