"""A 512 MB tensor streams through with the receiver's memory bounded by flow control."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from net_helpers import running_peers

from peer.net.config import MiB
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream
from peer.proto.net_pb2 import Status

TOTAL = 512 * MiB
CHUNK = 8 * MiB


@pytest.mark.slow
def test_a_512_mb_payload_streams_with_bounded_receiver_memory():
    process = psutil.Process()

    async def main():
        async with running_peers(2) as (receiver, sender):
            peak = {"rss": 0}

            async def sink(rpc: RPCStream) -> None:
                header = await rpc.recv_tensor_header()
                received, mismatches = 0, 0
                async for chunk in rpc.iter_raw(header.nbytes):
                    # the first byte of the sender's k-th buffer is k % 256: check it wherever it lands
                    first = -(-received // CHUNK) * CHUNK
                    for position in range(first, received + len(chunk), CHUNK):
                        mismatches += chunk[position - received] != (position // CHUNK) % 256
                    received += len(chunk)
                    if received % CHUNK < len(chunk):
                        peak["rss"] = max(peak["rss"], process.memory_info().rss)
                await rpc.send(Status(code=mismatches, message=str(received)))

            receiver.add_handler("test.sink/1", sink)
            buffer = bytearray(CHUNK)  # one buffer, rewritten: the sender holds 8 MiB, not 512
            view = memoryview(buffer)
            async with sender.open_stream(
                receiver.get_visible_maddrs()[0], "test.sink/1", timeout=120
            ) as rpc:
                baseline = process.memory_info().rss
                await rpc.send_tensor_header(TensorHeader("uint8", (TOTAL,), 0, TOTAL))
                for index in range(TOTAL // CHUNK):
                    buffer[0] = buffer[-1] = index % 256
                    await rpc.send_raw(view)  # returns once sealed: the buffer may then change
                await rpc.close_send()
                reply = await rpc.recv(Status)
            assert int(reply.message) == TOTAL and reply.code == 0  # every byte, in order
            growth = peak["rss"] - baseline
            assert growth < 200 * MiB, f"RSS grew by {growth / MiB:.0f} MiB while streaming 512 MiB"

    asyncio.run(main())
