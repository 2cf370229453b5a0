"""Transport benchmark on loopback: prints figures (not a test; timings are checked here, not in CI).

    python benchmarks/transport.py [--gib 1.0] [--calls 20000]

Prints, in one run:
  - single-stream throughput, encrypted (our Noise/AES-GCM stream) vs plain asyncio TCP, both with
    sender and receiver in one process (one event loop, sharing one core) and in two processes
    (real peers are separate processes);
  - unary RPC latency p50/p99 (one call at a time);
  - unary calls/s on one connection with 64 calls in flight.
Targets on the 2-core reference machine: encrypted >= 1.0 GB/s and >= 50% of plain TCP in the same
run; unary p50 <= 250 us; >= 5,000 calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peer.net.config import MiB
from peer.net.p2p import P2P
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream
from peer.proto.net_pb2 import Status

CHUNK = 8 * MiB
SINK = "bench.sink/1"
ECHO = "bench.echo/1"


# ---- the receiving side (used in-process and in a child process) -------------------------------


async def _sink(rpc: RPCStream) -> None:
    header = await rpc.recv_tensor_header()
    received = 0
    async for chunk in rpc.iter_raw(header.nbytes):
        received += len(chunk)
    await rpc.send(Status(message=str(received)))


async def _echo(request: Status, rpc: RPCStream) -> Status:
    return request


async def start_receiver() -> P2P:
    p2p = await P2P.acreate()
    p2p.add_handler(SINK, _sink)
    p2p.add_unary_handler(ECHO, _echo, Status)
    return p2p


class PlainSink(asyncio.BufferedProtocol):
    """Plain TCP receiver: reads into one buffer, answers b"k" once `total` bytes arrived."""

    def __init__(self, total: int):
        self.total, self.received = total, 0
        self.buffer = memoryview(bytearray(1 * MiB))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.received >= self.total and self.transport is not None:
            self.transport.write(b"k")


async def start_plain_receiver(total: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: PlainSink(total), "127.0.0.1", 0)


def _child(kind: str, total: int, conn) -> None:
    async def main() -> None:
        if kind == "encrypted":
            p2p = await start_receiver()
            conn.send(str(p2p.get_visible_maddrs()[0]))
        else:
            server = await start_plain_receiver(total)
            conn.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
        if kind == "encrypted":
            await p2p.ashutdown()
        else:
            server.close()

    asyncio.run(main())


# ---- the sending side ------------------------------------------------------------------------


async def send_encrypted(sender: P2P, target: str, total: int) -> float:
    view = memoryview(bytearray(CHUNK))
    start = time.perf_counter()
    async with sender.open_stream(target, SINK) as rpc:
        await rpc.send_tensor_header(TensorHeader("uint8", (total,), 0, total))
        for _ in range(total // CHUNK):
            await rpc.send_raw(view)
        await rpc.close_send()
        reply = await rpc.recv(Status)
    elapsed = time.perf_counter() - start
    assert int(reply.message) == total
    return total / elapsed


async def send_plain(port: int, total: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = bytes(CHUNK)
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        writer.write(chunk)
        await writer.drain()
    assert await reader.readexactly(1) == b"k"
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    return total / elapsed


async def throughput_in_process(total: int) -> tuple[float, float]:
    receiver, sender = await start_receiver(), await P2P.acreate()
    try:
        target = str(receiver.get_visible_maddrs()[0])
        await send_encrypted(sender, target, 64 * MiB)  # warm-up: connect, grow windows
        encrypted = await send_encrypted(sender, target, total)
    finally:
        await sender.ashutdown()
        await receiver.ashutdown()
    server = await start_plain_receiver(total)
    try:
        plain = await send_plain(server.sockets[0].getsockname()[1], total)
    finally:
        server.close()
        await server.wait_closed()
    return encrypted, plain


async def throughput_two_processes(total: int) -> tuple[float, float]:
    context = mp.get_context("spawn")
    results = []
    for kind in ("encrypted", "plain"):
        parent, child = context.Pipe()
        process = context.Process(target=_child, args=(kind, total, child), daemon=True)
        process.start()
        try:
            address = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
            if kind == "encrypted":
                sender = await P2P.acreate(host_maddrs=())
                try:
                    await send_encrypted(sender, address, 64 * MiB)
                    results.append(await send_encrypted(sender, address, total))
                finally:
                    await sender.ashutdown()
            else:
                results.append(await send_plain(address, total))
        finally:
            parent.send("stop")
            process.join(10)
    return results[0], results[1]


async def unary_latency(calls: int) -> tuple[float, float]:
    receiver, caller = await start_receiver(), await P2P.acreate()
    try:
        target = receiver.peer_id
        await caller.acall_unary(receiver.get_visible_maddrs()[0], ECHO, Status(), Status)
        request = Status(code=1, message="x" * 32)
        for _ in range(200):
            await caller.acall_unary(target, ECHO, request, Status)
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            await caller.acall_unary(target, ECHO, request, Status)
            samples.append(time.perf_counter() - start)
        samples.sort()
        return statistics.median(samples), samples[int(len(samples) * 0.99)]
    finally:
        await caller.ashutdown()
        await receiver.ashutdown()


async def calls_per_second(calls: int, in_flight: int = 64) -> float:
    receiver, caller = await start_receiver(), await P2P.acreate()
    try:
        target = receiver.peer_id
        await caller.acall_unary(receiver.get_visible_maddrs()[0], ECHO, Status(), Status)
        request = Status(code=1, message="x" * 32)
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await caller.acall_unary(target, ECHO, request, Status)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
        assert len(caller.pool.all()) == 1
        return calls / elapsed
    finally:
        await caller.ashutdown()
        await receiver.ashutdown()


def _gbps(value: float) -> str:
    return f"{value / 1e9:5.2f} GB/s"


async def main(gib: float, calls: int) -> None:
    total = int(gib * 1024 / 8) * CHUNK
    print(f"transport benchmark on loopback, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"single stream, {total / MiB:.0f} MiB per run, {CHUNK // MiB} MiB writes, default TransportConfig")
    encrypted, plain = await throughput_in_process(total)
    print(
        f"  one process  (sender+receiver share a loop): encrypted {_gbps(encrypted)}   "
        f"plain TCP {_gbps(plain)}   ratio {encrypted / plain:4.0%}"
    )
    encrypted, plain = await throughput_two_processes(total)
    print(
        f"  two processes (sender | receiver):           encrypted {_gbps(encrypted)}   "
        f"plain TCP {_gbps(plain)}   ratio {encrypted / plain:4.0%}"
    )
    p50, p99 = await unary_latency(min(calls, 5000))
    print(f"unary RPC latency, one call at a time: p50 {p50 * 1e6:6.0f} us   p99 {p99 * 1e6:6.0f} us")
    rate = await calls_per_second(calls)
    print(f"unary calls/s on one connection, 64 in flight: {rate:8.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per throughput run")
    parser.add_argument("--calls", type=int, default=20000, help="unary calls per figure")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.gib, arguments.calls))
