"""Multiaddrs: parsing validates every value, printing gives the canonical form back."""

from __future__ import annotations

import asyncio

import pytest
from net_helpers import call_echo, running_peers

from peer.errors import MultiaddrError
from peer.net.identity import Identity
from peer.net.multiaddr import Multiaddr

PEER = Identity.generate().peer_id
RELAY = Identity.generate().peer_id


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/1.2.3.4/tcp/31337",
        f"/ip4/127.0.0.1/tcp/0/p2p/{PEER}",
        "/ip6/::1/tcp/8080",
        "/dns4/relay.example.org/tcp/4001",
        "/ip4/10.0.0.1/udp/53",
        f"/dns/relay.example.org/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}",
    ],
)
def test_canonical_addresses_round_trip(text):
    assert str(Multiaddr.parse(text)) == text
    assert Multiaddr.parse(Multiaddr.parse(text)) == Multiaddr.parse(text)


def test_aliases_and_non_canonical_values_are_normalized():
    assert str(Multiaddr.parse(f"/ip4/1.2.3.4/tcp/0080/ipfs/{PEER}/")) == f"/ip4/1.2.3.4/tcp/80/p2p/{PEER}"
    assert str(Multiaddr.parse("/ip6/0:0:0:0:0:0:0:1/tcp/1")) == "/ip6/::1/tcp/1"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ip4/1.2.3.4", "must start with '/'"),
        ("/", "empty"),
        ("/ip4/1.2.3.400/tcp/1", "bad /ip4"),
        ("/ip4/::1/tcp/1", "bad /ip4"),
        ("/ip4/1.2.3.4/tcp/65536", "bad /tcp"),
        ("/ip4/1.2.3.4/tcp/-1", "bad /tcp"),
        ("/ip4/1.2.3.4/tcp", "needs a value"),
        ("/ip4/1.2.3.4/sctp/1", "unknown protocol"),
        ("/ip4/1.2.3.4/tcp/1/p2p/QmNotAPeer0", "bad /p2p"),
        ("/ip4/1.2.3.4//tcp/1", "unknown protocol"),
    ],
)
def test_invalid_addresses_raise_a_clear_error(text, why):
    with pytest.raises(MultiaddrError, match=why):
        Multiaddr.parse(text)
    with pytest.raises(ValueError):  # MultiaddrError is also a ValueError
        Multiaddr.parse(text)


def test_direct_address_parts():
    maddr = Multiaddr.parse(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")
    assert maddr.peer_id == PEER
    assert not maddr.is_relayed and maddr.relay_peer_id is None
    assert maddr.host_port() == ("127.0.0.1", 4001)
    assert str(maddr.without_peer_id()) == "/ip4/127.0.0.1/tcp/4001"
    assert maddr.without_peer_id().with_peer_id(PEER) == maddr


def test_relayed_address_leaves_room_for_circuits():
    maddr = Multiaddr.parse(f"/ip4/5.6.7.8/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}")
    assert maddr.is_relayed
    assert maddr.peer_id == PEER
    assert maddr.relay_peer_id == RELAY
    assert maddr.host_port() == ("5.6.7.8", 4001)  # dial the relay
    circuit = Multiaddr.parse(f"/ip4/5.6.7.8/tcp/4001/p2p/{RELAY}/p2p-circuit")
    assert circuit.peer_id is None and circuit.relay_peer_id == RELAY
    assert circuit.with_peer_id(PEER) == maddr


def test_from_host_port_picks_the_protocol():
    assert str(Multiaddr.from_host_port("10.1.2.3", 5)) == "/ip4/10.1.2.3/tcp/5"
    assert str(Multiaddr.from_host_port("::1", 5)) == "/ip6/::1/tcp/5"
    assert str(Multiaddr.from_host_port("example.org", 5, PEER)) == f"/dns/example.org/tcp/5/p2p/{PEER}"
    with pytest.raises(MultiaddrError, match="no host and TCP port"):
        Multiaddr.parse(f"/p2p/{PEER}").host_port()


def test_dns_addresses_resolve_when_dialed():
    """Containers name each other by service name (docker-compose): /dns4 and /dns resolve at dial time."""

    async def scenario() -> None:
        async with running_peers(3) as (target, *callers):
            _, port = target.get_visible_maddrs()[0].host_port()
            for caller, protocol in zip(callers, ("dns4", "dns"), strict=True):  # a fresh caller: a real dial
                maddr = f"/{protocol}/localhost/tcp/{port}/p2p/{target.peer_id}"
                assert await call_echo(caller, maddr, 41) == 42
                assert [conn.remote_peer_id for conn in caller.pool.all()] == [target.peer_id]
            assert await callers[0].connect(f"/dns4/localhost/tcp/{port}") == target.peer_id  # no PeerID

    asyncio.run(scenario())
