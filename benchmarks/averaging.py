"""Moshpit averaging figures: 4 peers in one process on loopback, each averaging 10M fp32 values.

    .venv/bin/python benchmarks/averaging.py [--numel 10000000] [--rounds 5] [--memory-rounds 1000]
                                             [--convergence-rounds 30]

Prints, without compression and with fp16: matchmaking time (beyond `min_matchmaking_time` when the
group does not fill up early), all-reduce time, goodput (averaged tensor bytes per peer per second)
and peak RSS; then RSS over 1,000 small rounds; then a Moshpit convergence table: rounds until the
MSE to the global mean drops below 1e-4 and 1e-9 for 64 networked averagers (one DHT peer each, in
this process) holding a scalar, with 0% and 1% of the peers failing each round (a seeded RNG picks
who sits the round out). Next to it, the same experiment in grid.py's in-memory model (ideal
matchmaking, no network), as a reference. The 64 peers share this process's one event loop, so their
DHT lookups take about a second and the table uses `min_matchmaking_time` = 5 s; a round with a
failure waits for that deadline (and a peer left alone gives up after 7.5 s).
"""

from __future__ import annotations

import argparse
import itertools
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
CONVERGENCE_MATCHMAKING_TIME = 5.0  # 64 peers share one event loop: DHT lookups take ~1 s here
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


def full_grid_cells(grid_size):
    """Every cell of the grid once, in order: the bijection under which d rounds are exact."""
    return list(itertools.product(*(range(m) for m in grid_size)))


def networked_convergence(dhts, grid_size, failure, rounds_max, seed=0):
    """Rounds of real averagers (one per DHT peer, a float64 scalar each) until MSE < 1e-9.

    Failures are injected deterministically: in each round a seeded RNG picks the peers that sit the
    round out (they do not call `step`); they come back in the next round with their old cell.
    """
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in dhts]
    mean = statistics.fmean(values)
    cells = full_grid_cells(grid_size)
    averagers = [
        DecentralizedAverager(
            [torch.tensor([value], dtype=torch.float64)],
            dht,
            prefix=f"conv_{'x'.join(map(str, grid_size))}_{round(failure * 100)}",
            target_group_size=grid_size[0],
            min_matchmaking_time=CONVERGENCE_MATCHMAKING_TIME,
            config=AveragingConfig(grid_size=grid_size, grid_coords=cells[i]),
        )
        for i, (value, dht) in enumerate(zip(values, dhts, strict=True))
    ]
    reached: dict[float, int | None] = {1e-4: None, 1e-9: None}
    try:
        for r in range(rounds_max):
            alive = [averager for averager in averagers if rng.random() >= failure]
            step_all(alive, timeout=1.5 * CONVERGENCE_MATCHMAKING_TIME)  # a lone peer gives up then
            for averager in averagers:  # a peer that sat out still follows the round count
                if averager not in alive:
                    averager.round_index += 1
            mse = statistics.fmean((_scalar(averager) - mean) ** 2 for averager in averagers)
            for threshold in reached:
                if reached[threshold] is None and mse < threshold:
                    reached[threshold] = r + 1
            if reached[1e-9] is not None:
                break
    finally:
        for averager in averagers:
            averager.shutdown()
    return reached


def model_convergence(grid_size, failure, rounds_max, peers, seed=0):
    """The same experiment in `grid.simulate_round`'s in-memory model: no network, ideal matchmaking."""
    rng = random.Random(seed)
    grid = MoshpitGrid(grid_size)
    values = [rng.gauss(0, 1) for _ in range(peers)]
    mean = statistics.fmean(values)
    coords = full_grid_cells(grid_size)
    reached: dict[float, int | None] = {1e-4: None, 1e-9: None}
    for r in range(rounds_max):
        alive = [rng.random() >= failure for _ in range(peers)]
        simulate_round(grid, values, coords, r, target_group_size=grid_size[0], alive=alive, rng=rng)
        mse = statistics.fmean((v - mean) ** 2 for v in values)
        for threshold in reached:
            if reached[threshold] is None and mse < threshold:
                reached[threshold] = r + 1
    return reached


def convergence_table(rounds_max=30):
    peers = 64
    first = DHT(start=True)
    maddrs = [str(m) for m in first.get_visible_maddrs()]
    dhts = [first] + [DHT(initial_peers=maddrs) for _ in range(peers - 1)]
    print(
        f"Moshpit convergence, {peers} networked averagers in this process (one DHT peer each, a float64"
        f" scalar each), full grid, groups of one grid line; failure = a peer sits a round out (seeded)."
        f" The model columns are grid.py's in-memory model (ideal matchmaking), for comparison:"
    )
    print("  grid     failures  rounds to MSE<1e-4  rounds to MSE<1e-9  | model: <1e-4  <1e-9  time")
    try:
        for grid_size in ((4, 4, 4), (8, 8)):
            for failure in (0.0, 0.01):
                started = time.perf_counter()
                real = networked_convergence(dhts, grid_size, failure, rounds_max)
                elapsed = time.perf_counter() - started
                model = model_convergence(grid_size, failure, rounds_max, peers)
                cells = [_rounds(reached[t], rounds_max) for reached in (real, model) for t in (1e-4, 1e-9)]
                print(
                    f"  {'x'.join(map(str, grid_size)):<8} {failure:>7.0%}  {cells[0]:>18}  {cells[1]:>18}"
                    f"  | {cells[2]:>12}  {cells[3]:>5}  {elapsed:4.0f} s"
                )
    finally:
        for dht in dhts:
            dht.shutdown()


def _rounds(value, rounds_max):
    return str(value) if value is not None else f">{rounds_max}"


def _scalar(averager):
    with averager.get_tensors() as (tensor,):
        return tensor.item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-rounds", type=int, default=1000)
    parser.add_argument("--convergence-rounds", type=int, default=30, help="0 skips the table")
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
    if args.convergence_rounds:
        convergence_table(args.convergence_rounds)


if __name__ == "__main__":
    main()
