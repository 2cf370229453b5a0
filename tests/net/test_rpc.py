"""RPC over multiplexed streams: the four call shapes, concurrency, typed errors, deadlines and
cancellation that reach the handler, size limits, flow control and stream limits."""

from __future__ import annotations

import asyncio

import pytest
from net_helpers import ECHO, call_echo, running_peers, wait_for

from peer.errors import (
    ConnectionClosedError,
    RPCCancelled,
    RPCCode,
    RPCDeadlineExceeded,
    RPCError,
)
from peer.net.config import MiB, TransportConfig
from peer.net.p2p import P2P
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream, open_call
from peer.proto.net_pb2 import Status


def _streams(p2p: P2P) -> int:
    return sum(conn.num_streams for conn in p2p.pool.all())


def test_unary_calls_by_multiaddr_peer_id_and_base58():
    async def main():
        async with running_peers(2) as (a, b):
            assert await call_echo(b, a.get_visible_maddrs()[0], 1) == 2
            assert await call_echo(b, a.peer_id, 2) == 3
            assert await call_echo(b, str(a.peer_id), 3) == 4
            assert len(b.pool.all()) == 1  # one connection, reused

    asyncio.run(main())


def test_streaming_calls_in_every_direction():
    async def main():
        async with running_peers(2) as (a, b):

            async def count_up(rpc: RPCStream) -> None:  # server streaming
                request = await rpc.recv(Status)
                for index in range(request.code):
                    await rpc.send(Status(code=index))

            async def total(rpc: RPCStream) -> None:  # client streaming
                await rpc.send(Status(code=sum([m.code async for m in rpc.messages(Status)])))

            async def double(rpc: RPCStream) -> None:  # bidirectional
                async for message in rpc.messages(Status):
                    await rpc.send(Status(code=message.code * 2))

            a.add_handler("test.count/1", count_up)
            a.add_handler("test.total/1", total)
            a.add_handler("test.double/1", double)

            async with b.open_stream(a.get_visible_maddrs()[0], "test.count/1", first=Status(code=5)) as rpc:
                assert [m.code async for m in rpc.messages(Status)] == [0, 1, 2, 3, 4]
            async with b.open_stream(a.peer_id, "test.total/1") as rpc:
                for value in (1, 2, 3):
                    await rpc.send(Status(code=value))
                await rpc.close_send()
                assert (await rpc.recv(Status)).code == 6
                assert await rpc.recv() is None
            async with b.open_stream(a.peer_id, "test.double/1", metadata={"k": b"v"}) as rpc:
                for value in (1, 2, 3):  # ping-pong: each reply arrives before the next send
                    await rpc.send(Status(code=value))
                    assert (await rpc.recv(Status)).code == value * 2
                await rpc.close_send()
                assert await rpc.recv() is None
            await wait_for(lambda: _streams(a) == 0 and _streams(b) == 0)

    asyncio.run(main())


def test_a_hundred_concurrent_unary_calls_each_in_its_own_stream():
    async def main():
        async with running_peers(2) as (a, b):
            stream_ids: set[int] = set()
            release = asyncio.Event()

            async def slow_echo(request: Status, rpc: RPCStream) -> Status:
                stream_ids.add(rpc.stream.stream_id)
                if len(stream_ids) == 100:
                    release.set()
                await release.wait()  # all 100 are in flight at once
                return Status(code=request.code * 3, message=request.message)

            a.add_unary_handler("test.slow/1", slow_echo, Status)
            target = a.get_visible_maddrs()[0]
            replies = await asyncio.gather(
                *(
                    b.acall_unary(target, "test.slow/1", Status(code=i, message=str(i)), Status, timeout=10)
                    for i in range(100)
                )
            )
            assert [(r.code, r.message) for r in replies] == [(i * 3, str(i)) for i in range(100)]
            assert len(stream_ids) == 100 and len(b.pool.all()) == 1
            await wait_for(lambda: _streams(a) == 0 and _streams(b) == 0)

    asyncio.run(main())


def test_a_remote_exception_arrives_as_a_typed_error():
    async def main():
        async with running_peers(2) as (a, b):

            async def fails(request: Status, rpc) -> Status:
                raise KeyError("no such expert")

            async def refuses(request: Status, rpc) -> Status:
                raise RPCError(RPCCode.NOT_FOUND, "expert ffn.3 is not here")

            a.add_unary_handler("test.fails/1", fails, Status)
            a.add_unary_handler("test.refuses/1", refuses, Status)
            a.add_unary_handler("test.v/2", refuses, Status)
            target = a.get_visible_maddrs()[0]
            with pytest.raises(RPCError) as info:
                await b.acall_unary(target, "test.fails/1", Status(), Status, timeout=5)
            assert info.value.code == RPCCode.INTERNAL and "KeyError" in info.value.message
            with pytest.raises(RPCError) as info:
                await b.acall_unary(target, "test.refuses/1", Status(), Status, timeout=5)
            assert info.value.code == RPCCode.NOT_FOUND and info.value.message == "expert ffn.3 is not here"
            with pytest.raises(RPCError) as info:
                await b.acall_unary(target, "test.v/1", Status(), Status, timeout=5)
            assert (
                info.value.code == RPCCode.UNIMPLEMENTED
                and "serves test.v/2 (version mismatch)" in info.value.message
            )
            assert await call_echo(b, target) == 2  # the connection survives failed calls

    asyncio.run(main())


def _blocking_handler(started: asyncio.Event, cancelled: asyncio.Event):
    async def handler(request: Status, rpc: RPCStream) -> Status:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return request

    return handler


def test_the_callers_deadline_reaches_the_handler():
    async def main():
        async with running_peers(2) as (a, b):
            started, cancelled = asyncio.Event(), asyncio.Event()
            a.add_unary_handler("test.block/1", _blocking_handler(started, cancelled), Status)
            with pytest.raises(RPCDeadlineExceeded, match=r"did not finish within 0\.2 s"):
                await b.acall_unary(a.get_visible_maddrs()[0], "test.block/1", Status(), Status, timeout=0.2)
            assert started.is_set()
            await asyncio.wait_for(cancelled.wait(), 5)
            await wait_for(lambda: _streams(a) == 0 and _streams(b) == 0)

    asyncio.run(main())


def test_the_handler_enforces_the_deadline_it_was_sent():
    async def main():
        async with running_peers(2) as (a, b):
            started, cancelled = asyncio.Event(), asyncio.Event()
            a.add_unary_handler("test.block/1", _blocking_handler(started, cancelled), Status)
            seen: list[float | None] = []

            async def remaining(rpc: RPCStream) -> None:
                seen.append(rpc.time_left())
                await rpc.send(b"ok")

            a.add_handler("test.remaining/1", remaining)
            async with b.open_stream(a.get_visible_maddrs()[0], "test.remaining/1", timeout=30) as rpc:
                assert await rpc.recv() == b"ok"
            assert seen[0] is not None and 0 < seen[0] <= 30
            # a caller that sends a deadline but never enforces it: the handler enforces its copy
            stream = await a_connection(b, a).open_stream()
            rpc = await open_call(stream, b.config, "test.block/1", 0.3, None, Status())
            with pytest.raises(RPCDeadlineExceeded, match="passed its deadline"):
                await asyncio.wait_for(rpc.recv(), 10)
            assert cancelled.is_set()

    asyncio.run(main())


def a_connection(caller: P2P, target: P2P):
    conn = caller.pool.get_open(target.peer_id)
    assert conn is not None
    return conn


def test_cancelling_the_caller_cancels_the_remote_handler():
    async def main():
        async with running_peers(2) as (a, b):
            started, cancelled = asyncio.Event(), asyncio.Event()
            a.add_unary_handler("test.block/1", _blocking_handler(started, cancelled), Status)
            call = asyncio.ensure_future(
                b.acall_unary(a.get_visible_maddrs()[0], "test.block/1", Status(), Status)
            )
            await asyncio.wait_for(started.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.wait_for(cancelled.wait(), 5)
            # and rpc.cancel() on a stream does the same
            started.clear(), cancelled.clear()
            async with b.open_stream(a.peer_id, "test.block/1", first=Status()) as rpc:
                await asyncio.wait_for(started.wait(), 5)
                rpc.cancel()
                with pytest.raises(RPCCancelled):
                    await rpc.recv()
            await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(main())


def test_message_size_limits_give_a_clear_error_on_both_sides():
    config = TransportConfig(max_message_size=64 * 1024)

    async def main():
        async with running_peers(2, config=config) as (a, b):

            async def sink(rpc: RPCStream) -> None:
                async for _ in rpc.messages():
                    pass

            a.add_handler("test.sink/1", sink)
            async with b.open_stream(a.get_visible_maddrs()[0], "test.sink/1") as rpc:
                with pytest.raises(RPCError, match="exceeds the 65536-byte limit") as info:
                    await rpc.send(b"x" * (64 * 1024 + 1))
                assert info.value.code == RPCCode.MESSAGE_TOO_LARGE
            # a peer with a larger limit sends a message a's limit refuses: a resets the stream
            big = await P2P.acreate(config=TransportConfig(max_message_size=1 * MiB))
            try:
                async with big.open_stream(a.get_visible_maddrs()[0], "test.sink/1") as rpc:
                    await rpc.send(b"x" * (200 * 1024))
                    with pytest.raises(RPCError, match="exceeds the 65536-byte limit") as info:
                        await rpc.recv()
                    assert info.value.code == RPCCode.MESSAGE_TOO_LARGE
            finally:
                await big.ashutdown()
            assert await call_echo(b, a.peer_id) == 2

    asyncio.run(main())


def test_tensors_stream_as_a_header_and_raw_chunks():
    async def main():
        async with running_peers(2) as (a, b):

            async def receive(rpc: RPCStream) -> None:
                header = await rpc.recv_tensor_header()
                buffer = bytearray(header.nbytes)
                await rpc.readinto(memoryview(buffer))
                second = await rpc.recv_tensor_header()
                chunks = [bytes(chunk) async for chunk in rpc.iter_raw(second.nbytes)]
                await rpc.send(Status(code=sum(buffer) + sum(map(sum, chunks)), message=header.dtype))

            a.add_handler("test.tensor/1", receive)
            payload = bytearray(range(256)) * 4096  # 1 MiB, mutable: sent without a copy
            async with b.open_stream(a.get_visible_maddrs()[0], "test.tensor/1") as rpc:
                await rpc.send_tensor_bytes(TensorHeader("float32", (1024, 256), 0, len(payload)), payload)
                await rpc.send_tensor_header(TensorHeader("uint8", (3,), 0, 3))
                await rpc.send_raw(b"\x01\x02\x03")
                await rpc.close_send()
                reply = await rpc.recv(Status)
                assert reply.code == sum(payload) + 6 and reply.message == "float32"
                with pytest.raises(ValueError, match="header says"):
                    await rpc.send_tensor_bytes(TensorHeader("uint8", (2,), 0, 2), b"abc")

    asyncio.run(main())


def test_a_stalled_large_transfer_does_not_starve_small_calls():
    config = TransportConfig(stream_window=256 * 1024)

    async def main():
        async with running_peers(2, config=config) as (a, b):
            stalled = asyncio.Event()

            async def never_reads(rpc: RPCStream) -> None:
                stalled.set()
                await asyncio.sleep(3600)

            a.add_handler("test.stall/1", never_reads)
            async with b.open_stream(a.get_visible_maddrs()[0], "test.stall/1") as rpc:
                sender = asyncio.ensure_future(rpc.send(bytes(64 * MiB)))
                await asyncio.wait_for(stalled.wait(), 5)
                for value in range(20):  # the big stream is stuck on flow control; calls still pass
                    assert await call_echo(b, a.peer_id, value) == value + 1
                assert not sender.done()
                conn = a.pool.get_open(b.peer_id)
                assert conn is not None and all(s._inbox_bytes <= 256 * 1024 for s in conn._streams.values())
                rpc.cancel()
                with pytest.raises(RPCCancelled):
                    await sender

    asyncio.run(main())


def test_streams_past_the_limit_are_refused_and_slots_come_back():
    config = TransportConfig(max_streams=4)

    async def main():
        async with running_peers(2, config=config) as (a, b):
            started, cancelled = asyncio.Event(), asyncio.Event()
            a.add_unary_handler("test.block/1", _blocking_handler(started, cancelled), Status)
            target = a.get_visible_maddrs()[0]
            blocked = [
                asyncio.ensure_future(b.acall_unary(target, "test.block/1", Status(), Status))
                for _ in range(4)
            ]
            await wait_for(lambda: _streams(a) == 4)
            # a 5th call waits for a slot on the caller's side (max_streams applies to both sides)
            fifth = asyncio.ensure_future(call_echo(b, a.peer_id))
            await asyncio.sleep(0.05)
            assert not fifth.done()
            blocked[0].cancel()
            assert await fifth == 2
            for call in blocked:
                call.cancel()
            await asyncio.gather(*blocked, return_exceptions=True)
            await wait_for(lambda: _streams(a) == 0 and _streams(b) == 0)

    asyncio.run(main())


def test_the_responder_refuses_streams_past_its_own_limit():
    async def main():
        async with running_peers(1, config=TransportConfig(max_streams=2)) as (a,):
            b = await P2P.acreate()  # b allows more streams than a accepts
            try:
                started, cancelled = asyncio.Event(), asyncio.Event()
                a.add_unary_handler("test.block/1", _blocking_handler(started, cancelled), Status)
                target = a.get_visible_maddrs()[0]
                blocked = [
                    asyncio.ensure_future(b.acall_unary(target, "test.block/1", Status(), Status))
                    for _ in range(2)
                ]
                await wait_for(lambda: _streams(a) == 2)
                with pytest.raises(RPCError, match="too many concurrent streams") as info:
                    await call_echo(b, a.peer_id)
                assert info.value.code == RPCCode.RESOURCE_EXHAUSTED
                for call in blocked:
                    call.cancel()
                await asyncio.gather(*blocked, return_exceptions=True)
                await wait_for(lambda: _streams(a) == 0)
                assert await call_echo(b, a.peer_id) == 2
            finally:
                await b.ashutdown()

    asyncio.run(main())


def test_handlers_that_end_early_release_their_streams():
    async def main():
        async with running_peers(2) as (a, b):

            async def early(rpc: RPCStream) -> None:
                await rpc.recv()
                await rpc.send(b"done")  # returns while the caller could still send

            a.add_handler("test.early/1", early)
            for _ in range(5):
                async with b.open_stream(a.get_visible_maddrs()[0], "test.early/1") as rpc:
                    await rpc.send(b"x")
                    assert await rpc.recv() == b"done"
                    assert await rpc.recv() is None
            await wait_for(lambda: _streams(a) == 0 and _streams(b) == 0)

    asyncio.run(main())


def test_idle_connections_are_closed_and_the_next_call_redials():
    config = TransportConfig(idle_timeout=0.2)

    async def main():
        async with running_peers(2, config=config) as (a, b):
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2
            conn = b.pool.get_open(a.peer_id)
            assert conn is not None
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert "idle" in conn.close_reason
            assert await call_echo(b, a.peer_id) == 2
            assert b.pool.get_open(a.peer_id) is not conn

    asyncio.run(main())


def test_keepalive_pings_measure_rtt_and_keep_busy_connections_open():
    config = TransportConfig(keepalive_interval=0.05, keepalive_timeout=5)

    async def main():
        async with running_peers(2, config=config) as (a, b):
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2
            conn = b.pool.get_open(a.peer_id)
            assert conn is not None
            await wait_for(lambda: conn.rtt is not None)
            assert not conn.closed

    asyncio.run(main())


def test_a_silent_connection_is_closed_by_keepalive():
    config = TransportConfig(keepalive_interval=0.05, keepalive_timeout=0.2)

    async def main():
        async with running_peers(2, config=config) as (a, b):
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2
            conn = b.pool.get_open(a.peer_id)
            server_side = a.pool.get_open(b.peer_id)
            assert conn is not None and server_side is not None
            server_side._transport.pause_reading()  # a stops reading: b's pings go unanswered
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert "keepalive timeout" in conn.close_reason
            with pytest.raises(ConnectionClosedError):
                await conn.open_stream()
            server_side._transport.resume_reading()

    asyncio.run(main())


def test_the_blocking_facade_runs_on_the_background_loop():
    a = P2P.create()
    b = P2P.create()
    try:

        async def echo(request: Status, rpc: RPCStream) -> Status:
            return Status(code=request.code + 1)

        a.add_unary_handler(ECHO, echo, Status)
        assert b.call_unary(a.get_visible_maddrs()[0], ECHO, Status(code=41), Status, timeout=5).code == 42
    finally:
        b.shutdown()
        a.shutdown()
