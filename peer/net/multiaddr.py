"""Multiaddrs: self-describing network addresses, as in libp2p.

    /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...                     a direct address
    /dns4/relay.example.org/tcp/4001/p2p/<RelayID>/p2p-circuit/p2p/<PeerID>   a relayed address

Only the text form is used on our wire. Parsing validates every value (IP syntax, port range, PeerID),
and printing gives the canonical form back (`/ipfs/` is read as `/p2p/`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from peer.errors import MultiaddrError
from peer.net.identity import PeerID

# protocol name -> does it take a value
_PROTOCOLS: dict[str, bool] = {
    "ip4": True,
    "ip6": True,
    "dns": True,
    "dns4": True,
    "dns6": True,
    "tcp": True,
    "udp": True,
    "p2p": True,
    "p2p-circuit": False,
}
_ALIASES = {"ipfs": "p2p"}
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


def _validate(protocol: str, value: str) -> str:
    if protocol == "ip4":
        if not isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address):
            raise ValueError("not an IPv4 address")
        return str(ipaddress.IPv4Address(value))
    if protocol == "ip6":
        return str(ipaddress.IPv6Address(value))
    if protocol in ("tcp", "udp"):
        if not value.isdigit() or not 0 <= int(value) <= 65535:
            raise ValueError("port must be an integer from 0 to 65535")
        return str(int(value))
    if protocol == "p2p":
        return PeerID.from_base58(value).to_base58()
    if protocol.startswith("dns"):
        if not value or len(value) > 253 or any(c.isspace() or c == "/" for c in value):
            raise ValueError("not a DNS name")
        return value
    return value


@dataclass(frozen=True)
class Multiaddr:
    """An immutable, validated multiaddr: a sequence of (protocol, value) components."""

    components: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str | Multiaddr) -> Multiaddr:
        if isinstance(text, Multiaddr):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a multiaddr must be a str, not {type(text).__name__}")
        if not text.startswith("/"):
            raise MultiaddrError(f"invalid multiaddr {text!r}: it must start with '/'")
        parts = text.rstrip("/").split("/")[1:]
        components: list[tuple[str, str | None]] = []
        index = 0
        while index < len(parts):
            name = _ALIASES.get(parts[index], parts[index])
            if name not in _PROTOCOLS:
                raise MultiaddrError(f"invalid multiaddr {text!r}: unknown protocol {parts[index]!r}")
            if not _PROTOCOLS[name]:
                components.append((name, None))
                index += 1
                continue
            if index + 1 >= len(parts):
                raise MultiaddrError(f"invalid multiaddr {text!r}: /{name} needs a value")
            try:
                value = _validate(name, parts[index + 1])
            except ValueError as e:
                raise MultiaddrError(f"invalid multiaddr {text!r}: bad /{name} value: {e}") from None
            components.append((name, value))
            index += 2
        if not components:
            raise MultiaddrError(f"invalid multiaddr {text!r}: it is empty")
        return cls(tuple(components))

    @classmethod
    def from_host_port(cls, host: str, port: int, peer_id: PeerID | None = None) -> Multiaddr:
        try:
            version = ipaddress.ip_address(host).version
            proto = "ip4" if version == 4 else "ip6"
        except ValueError:
            proto = "dns"
        text = f"/{proto}/{host}/tcp/{port}"
        if peer_id is not None:
            text += f"/p2p/{peer_id}"
        return cls.parse(text)

    def __str__(self) -> str:
        return "".join(f"/{name}" if value is None else f"/{name}/{value}" for name, value in self.components)

    def __repr__(self) -> str:
        return f"Multiaddr({self})"

    @property
    def peer_id(self) -> PeerID | None:
        """The PeerID this address leads to (its last /p2p component), if it names one."""
        for name, value in reversed(self.components):
            if name == "p2p" and value is not None:
                return PeerID.from_base58(value)
            if name == "p2p-circuit":
                return None
        return None

    @property
    def is_relayed(self) -> bool:
        return any(name == "p2p-circuit" for name, _ in self.components)

    @property
    def relay_peer_id(self) -> PeerID | None:
        """For a relayed address, the relay's PeerID (the /p2p before /p2p-circuit)."""
        previous: tuple[str, str | None] | None = None
        for component in self.components:
            if component[0] == "p2p-circuit":
                if previous is not None and previous[0] == "p2p" and previous[1] is not None:
                    return PeerID.from_base58(previous[1])
                return None
            previous = component
        return None

    def host_port(self) -> tuple[str, int]:
        """The (host, TCP port) to dial: the relay's for a relayed address."""
        host: str | None = None
        for name, value in self.components:
            if name in _HOST_PROTOCOLS:
                host = value
            elif name == "tcp" and host is not None and value is not None:
                return host, int(value)
        raise MultiaddrError(f"multiaddr {self} has no host and TCP port to dial")

    def with_peer_id(self, peer_id: PeerID) -> Multiaddr:
        return Multiaddr.parse(f"{self.without_peer_id()}/p2p/{peer_id}")

    def without_peer_id(self) -> Multiaddr:
        """The address with its final /p2p component removed (a relay's /p2p is kept)."""
        if self.components and self.components[-1][0] == "p2p" and len(self.components) > 1:
            return Multiaddr(self.components[:-1])
        return self
