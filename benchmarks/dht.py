"""Many DHT peers in one process: store/get latency, success under churn, hops, memory per peer.

    .venv/bin/python benchmarks/dht.py [--sizes 64,256,1024] [--keys 200] [--churn 0.1]
                                       [--max-connections auto] [--seed 0] [--no-gc-freeze]

For each N it starts N server peers on 127.0.0.1 (the first alone, then waves of `--wave` peers that
bootstrap from 3 random earlier peers) and measures, one operation at a time:
- store: `--keys` values, each stored by a random peer; get: each read by another random peer;
- the same again while `--churn` of the peers are killed halfway through the gets;
- latency (mean, p99), success rate (a get succeeds when it returns the stored value), hops and
  requests per lookup (hops: the longest chain of sequential requests; both from `DHTNode.stats`),
  and memory per peer (the process's RSS growth while the N peers started, divided by N).
Every in-process connection costs two file descriptors, so each peer keeps at most
`--max-connections` (default: what the fd limit allows, at most 32; `DHTConfig.max_connections`).
An N that cannot run (too few fds) is reported with the reason.

All N peers share one event loop thread and one Python heap, which no real peer does. The heap of
1,024 peers holds over a million objects, and each full pass of the garbage collector over it takes
seconds on this machine: one such pass during the gets would add ~10 ms to their mean. So after each
wave of joins, and before the stores and the gets of each phase, the benchmark collects and then
freezes the objects that exist (`gc.freeze`), so that the collector only looks at newer ones, as a
peer's collector looks only at its own; `--no-gc-freeze` measures without that.

Targets on a 2-core machine: 1024 peers work; 100 % success without churn, >= 99 % with 10 % churn;
get mean <= 10 ms at 1024 peers; <= 10 MiB per peer. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import random
import resource
import statistics
import time
from dataclasses import dataclass, field

from peer.dht import DHT, DHTConfig, get_dht_time
from peer.utils.loop import run_coroutine

MiB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Phase:
    store_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    stored: int = 0
    found: int = 0
    hops: int = 0
    lookups: int = 0
    requests: int = 0


async def start_swarm(
    count: int, config: DHTConfig, rng: random.Random, wave: int, freeze_gc: bool = True
) -> list[DHT]:
    """`count` peers: the first alone, then waves of `wave` that each join through 3 earlier peers.

    With `freeze_gc`, the objects of the peers started so far leave the garbage collector's view
    after each wave (`gc.freeze`): N peers share one Python heap here, which no real peer does.
    """
    dhts: list[DHT] = []
    first = DHT(start=False, config=config)
    dhts.append(first)
    await first.astart()
    while len(dhts) < count:
        batch = []
        for _ in range(min(wave, count - len(dhts))):
            sources = rng.sample(dhts, min(3, len(dhts)))
            batch.append(
                DHT([m for d in sources for m in d.get_visible_maddrs()], start=False, config=config)
            )
        dhts.extend(batch)
        await asyncio.gather(*(dht.astart() for dht in batch))
        if freeze_gc:
            settle_heap()
    return dhts


def settle_heap() -> None:
    """Collect, then hide the surviving objects from later collections (see the module docstring)."""
    gc.collect()
    gc.freeze()


async def run_phase(
    dhts: list[DHT], rng: random.Random, num_keys: int, prefix: str, kill: float, freeze_gc: bool
) -> tuple[Phase, list[DHT]]:
    phase = Phase()
    if freeze_gc:
        settle_heap()
    expiration = get_dht_time() + 3600
    keys = [f"{prefix}/{i}" for i in range(num_keys)]
    alive = list(dhts)
    for i, key in enumerate(keys):
        start = time.perf_counter()
        ok = await rng.choice(alive).astore(key, i, expiration)
        phase.store_ms.append((time.perf_counter() - start) * 1000)
        phase.stored += bool(ok)
    if freeze_gc:
        settle_heap()
    counters = ("hops", "lookups", "requests")
    before = {dht: [dht.node.stats[name] for name in counters] for dht in alive}

    def count_lookups(peers: list[DHT]) -> None:
        for dht in peers:
            phase.hops += dht.node.stats["hops"] - before[dht][0]
            phase.lookups += dht.node.stats["lookups"] - before[dht][1]
            phase.requests += dht.node.stats["requests"] - before[dht][2]

    for i, key in enumerate(keys):
        if kill and i == num_keys // 2:
            killed = set(rng.sample(alive, int(len(alive) * kill)))
            count_lookups(list(killed))
            for dht in killed:
                await dht.ashutdown()
            alive = [dht for dht in alive if dht not in killed]
        start = time.perf_counter()
        item = await rng.choice(alive).aget(key)
        phase.get_ms.append((time.perf_counter() - start) * 1000)
        phase.found += item is not None and item.value == i
    count_lookups(alive)
    return phase, alive


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def print_table(
    n: int, build_s: float, per_peer: float, fds: int, phases: dict[str, Phase], keys: int
) -> None:
    print(
        f"\n== N = {n} peers: started in {build_s:.1f} s, "
        f"{per_peer / MiB:.2f} MiB RSS per peer, {fds} fds open"
    )
    print(
        f"{'phase':<14}{'store mean':>11}{'store p99':>11}{'get mean':>10}{'get p99':>10}"
        f"{'stored':>9}{'found':>9}{'hops/lookup':>13}{'requests/lookup':>17}"
    )
    for name, phase in phases.items():
        hops = phase.hops / phase.lookups if phase.lookups else float("nan")
        requests = phase.requests / phase.lookups if phase.lookups else float("nan")
        print(
            f"{name:<14}{statistics.mean(phase.store_ms):>9.1f}ms{p99(phase.store_ms):>9.1f}ms"
            f"{statistics.mean(phase.get_ms):>8.1f}ms{p99(phase.get_ms):>8.1f}ms"
            f"{100 * phase.stored / keys:>8.1f}%{100 * phase.found / keys:>8.1f}%{hops:>13.2f}"
            f"{requests:>17.2f}"
        )


async def bench_one(n: int, args: argparse.Namespace, max_connections: int) -> None:
    rng = random.Random(args.seed + n)
    config = DHTConfig(request_timeout=args.request_timeout, max_connections=max_connections)
    gc.collect()
    rss_before = rss_bytes()
    start = time.perf_counter()
    dhts = await start_swarm(n, config, rng, args.wave, freeze_gc=not args.no_gc_freeze)
    build_s = time.perf_counter() - start
    gc.collect()
    per_peer = (rss_bytes() - rss_before) / n
    alive = dhts
    try:
        phases = {}
        freeze = not args.no_gc_freeze
        phases["no churn"], alive = await run_phase(alive, rng, args.keys, "calm", 0.0, freeze)
        label = f"{args.churn:.0%} killed"
        phases[label], alive = await run_phase(alive, rng, args.keys, "churn", args.churn, freeze)
        print_table(n, build_s, per_peer, open_fds(), phases, args.keys)
    finally:
        for dht in alive:
            await dht.ashutdown()
        gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,256,1024", help="comma-separated swarm sizes")
    parser.add_argument("--keys", type=int, default=200, help="keys stored and read per phase")
    parser.add_argument("--churn", type=float, default=0.1, help="fraction of peers killed mid-run")
    parser.add_argument("--max-connections", default="auto", help="per peer; 'auto' fits the fd limit")
    parser.add_argument("--request-timeout", type=float, default=3.0)
    parser.add_argument("--wave", type=int, default=32, help="peers bootstrapped at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="let the garbage collector scan every peer's objects"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, fd limit {soft}, "
        f"{args.keys} keys per phase, churn {args.churn:.0%}, "
        f"gc freeze {'off' if args.no_gc_freeze else 'on'}"
    )
    for n in sizes:
        budget = int(soft * 0.8) - open_fds()  # headroom for connections being replaced
        if args.max_connections == "auto":
            max_connections = min(32, budget // n - 1)
        else:
            max_connections = int(args.max_connections)
        if max_connections < 4 or n * (1 + max_connections) > budget:
            print(
                f"\n== N = {n}: cannot run: {n} peers with {max_connections} connections each need "
                f"about {n * (1 + max(max_connections, 4))} file descriptors; the limit is {soft} "
                f"(raise `ulimit -n` or pass a smaller --max-connections)"
            )
            continue
        print(f"\n(N = {n}: at most {max_connections} connections per peer)")
        try:
            run_coroutine(bench_one(n, args, max_connections))
        except Exception as e:  # report and go on with the next size
            print(f"\n== N = {n}: could not run: {type(e).__name__}: {e}")
        gc.collect()


if __name__ == "__main__":
    main()
