"""Moshpit averaging figures: 4 peers in one process on loopback, each averaging 10M fp32 values.

    .venv/bin/python benchmarks/averaging.py [--numel 10000000] [--rounds 3]

Prints, without compression and with fp16: matchmaking time (beyond `min_matchmaking_time` when the
group does not fill up early), all-reduce time, goodput (averaged tensor bytes per peer per second)
and peak RSS; then RSS over 1,000 small rounds, and a Moshpit convergence table (in-memory model).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peer.averaging import AveragingConfig, DecentralizedAverager, MoshpitGrid
from peer.averaging.grid import simulate_round
from peer.compression import Float16Compression, NoCompression
from peer.dht import DHT

MIN_MATCHMAKING_TIME = 1.0
CHUNK_SIZE = 1 << 20  # the library default


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_all(averagers, timeout=60.0):
    results = [None] * len(averagers)

    def run(i):
        results[i] = averagers[i].step(timeout=timeout)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(averagers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def bench_codec(dhts, name, compression, numel, rounds):
    torch.manual_seed(0)
    tensors = [[torch.randn(numel)] for _ in dhts]
    expected = torch.stack([t[0] for t in tensors]).mean(0)
    averagers = [
        DecentralizedAverager(
            t,
            dht,
            prefix=f"bench_{name}",
            min_matchmaking_time=MIN_MATCHMAKING_TIME,
            compression=compression,
            config=AveragingConfig(allreduce_timeout=60, chunk_size=CHUNK_SIZE),
        )
        for t, dht in zip(tensors, dhts, strict=True)
    ]
    matchmaking, allreduce = [], []
    for r in range(rounds):
        results = step_all(averagers)
        if any(res is None or len(res) != len(dhts) for res in results):
            print(f"  round {r}: some peers failed: {[None if x is None else len(x) for x in results]}")
            continue
        matchmaking.append(max(a.last_timings["matchmaking"] for a in averagers))
        allreduce.append(max(a.last_timings["allreduce"] for a in averagers))
        if r == 0:
            with averagers[0].get_tensors() as (tensor,):
                error = (tensor - expected).abs().max().item()
    for averager in averagers:
        averager.shutdown()
    mb = numel * 4 / 1e6
    best = min(allreduce)
    print(
        f"{name:>6}: matchmaking {statistics.median(matchmaking):.3f} s (min_matchmaking_time "
        f"{MIN_MATCHMAKING_TIME} s; the group filled up early)  all-reduce median "
        f"{statistics.median(allreduce):.3f} s, best {best:.3f} s  goodput {mb / best:.0f} MB/s per peer  "
        f"max error after round 1 {error:.2e}  peak RSS {peak_rss_mib():.0f} MiB"
    )


def bench_deadline_matchmaking(dhts, rounds=3):
    """target_group_size 8 with 4 peers: the group never fills, so the leader begins at its deadline."""
    averagers = [
        DecentralizedAverager(
            [torch.randn(1000)],
            dht,
            prefix="bench_deadline",
            target_group_size=8,
            min_matchmaking_time=MIN_MATCHMAKING_TIME,
        )
        for dht in dhts
    ]
    times = []
    for _ in range(rounds):
        results = step_all(averagers)
        if all(r is not None and len(r) == len(dhts) for r in results):
            times.append(max(a.last_timings["matchmaking"] for a in averagers))
    for averager in averagers:
        averager.shutdown()
    if times:
        print(
            "matchmaking when the group never fills (target 8, 4 peers): "
            f"median {statistics.median(times):.3f} s"
            f" = min_matchmaking_time + {statistics.median(times) - MIN_MATCHMAKING_TIME:.3f} s"
        )
    else:
        print("matchmaking when the group never fills: no round formed one group of 4")


def bench_memory(dhts, rounds):
    averagers = [
        DecentralizedAverager(
            [torch.randn(10_000)],
            dht,
            prefix="bench_mem",
            min_matchmaking_time=0.5,
            config=AveragingConfig(chunk_size=4096),
        )
        for dht in dhts
    ]
    process = psutil.Process()
    step_all(averagers)
    rss = []
    started = time.perf_counter()
    for r in range(rounds):
        step_all(averagers)
        if r in (rounds // 10, rounds - 1):
            rss.append(process.memory_info().rss / 2**20)
    for averager in averagers:
        averager.shutdown()
    print(
        f"memory: {rounds} rounds of 4 peers x 10k values in {time.perf_counter() - started:.0f} s; "
        f"RSS after {rounds // 10} rounds {rss[0]:.0f} MiB, after {rounds} rounds {rss[1]:.0f} MiB"
    )


def convergence_table(peers=64, rounds_max=30):
    print(f"Moshpit convergence, {peers} peers with scalars, groups of 4 (in-memory model of grid.py):")
    print("  grid     failures  rounds to MSE<1e-4  rounds to MSE<1e-9")
    for grid_size in ((4, 4, 4), (8, 8)):
        for failure in (0.0, 0.01):
            rng = random.Random(0)
            grid = MoshpitGrid(grid_size)
            values = [rng.gauss(0, 1) for _ in range(peers)]
            mean = statistics.fmean(values)
            coords = [tuple(int(c) for c in _cell(i, grid_size)) for i in range(peers)]
            reached: dict[float, int | None] = {1e-4: None, 1e-9: None}
            for r in range(rounds_max):
                alive = [rng.random() >= failure for _ in range(peers)]
                simulate_round(grid, values, coords, r, target_group_size=grid_size[0], alive=alive, rng=rng)
                mse = statistics.fmean((v - mean) ** 2 for v in values)
                for threshold in reached:
                    if reached[threshold] is None and mse < threshold:
                        reached[threshold] = r + 1
            cells = [str(reached[t]) if reached[t] is not None else f">{rounds_max}" for t in reached]
            print(f"  {'x'.join(map(str, grid_size)):<8} {failure:>7.0%}  {cells[0]:>18}  {cells[1]:>18}")


def _cell(i, grid_size):
    out = []
    for m in reversed(grid_size):
        out.append(i % m)
        i //= m
    return reversed(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-rounds", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"4 peers in one process, {args.numel / 1e6:.0f}M fp32 ({args.numel * 4 / 1e6:.0f} MB) each, "
        "loopback, "
        f"{torch.get_num_threads()} torch threads, {psutil.cpu_count()} CPUs"
    )
    first = DHT(start=True)
    dhts = [first] + [DHT(initial_peers=[str(m) for m in first.get_visible_maddrs()]) for _ in range(3)]
    try:
        if args.rounds:
            bench_codec(dhts, "none", NoCompression(), args.numel, args.rounds)
            bench_codec(dhts, "fp16", Float16Compression(), args.numel, args.rounds)
            bench_deadline_matchmaking(dhts)
        if args.memory_rounds:
            bench_memory(dhts, args.memory_rounds)
    finally:
        for dht in dhts:
            dht.shutdown()
    convergence_table()


if __name__ == "__main__":
    main()
