"""The addresses a peer listening on 0.0.0.0 announces: the machine's own, loopback last, so that
other machines get one they can dial (before, only what the host name resolved to: 127.0.1.1 on a
usual Debian or Ubuntu machine)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from net_helpers import ECHO, call_echo, echo

from peer.net.interfaces import local_addresses
from peer.net.p2p import P2P
from peer.proto.net_pb2 import Status


def _kernel_addresses() -> set[str]:
    """Every global IPv4 address of this machine's interfaces, as the kernel's routing table lists
    them (/proc/net/fib_trie: an address line followed by "/32 host LOCAL")."""
    fib_trie = Path("/proc/net/fib_trie")
    if not fib_trie.exists():
        pytest.skip("no /proc/net/fib_trie: this test reads Linux's routing table")
    found, last = set(), None
    for line in fib_trie.read_text().splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text == "/32 host LOCAL" and last is not None:
            address = ipaddress.ip_address(last)
            if not address.is_loopback and not address.is_link_local:
                found.add(str(address))
    return found


@pytest.mark.parametrize("ipv6", [False, True])
def test_addresses_are_usable_and_loopback_comes_last(ipv6) -> None:
    addresses = local_addresses(ipv6)
    parsed = [ipaddress.ip_address(text) for text in addresses]
    assert all(address.version == (6 if ipv6 else 4) for address in parsed)
    assert not any(address.is_link_local or address.is_unspecified for address in parsed)
    assert parsed[-1].is_loopback and len(set(addresses)) == len(addresses)
    assert all(
        not address.is_loopback for address in parsed[: len(parsed) - sum(a.is_loopback for a in parsed)]
    )


def test_every_interface_address_is_announced() -> None:
    assert _kernel_addresses() <= set(local_addresses(ipv6=False))


def test_a_peer_on_every_interface_is_reached_at_its_first_announced_address() -> None:
    expected = _kernel_addresses()

    async def main() -> None:
        server = await P2P.acreate(host_maddrs=["/ip4/0.0.0.0/tcp/0"])
        client = await P2P.acreate()
        try:
            server.add_unary_handler(ECHO, echo, Status)
            announced = server.get_visible_maddrs()
            hosts = [maddr.host_port()[0] for maddr in announced]
            assert hosts[-1] == "127.0.0.1" and expected <= set(hosts)
            if expected:
                assert hosts[0] in expected  # the machine's own address comes first
            assert await call_echo(client, announced[0]) == 2  # this machine's own address
        finally:
            await client.ashutdown()
            await server.ashutdown()

    asyncio.run(main())
