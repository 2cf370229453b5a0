"""This machine's addresses, for a peer that listens on 0.0.0.0 or :: to announce.

`local_addresses(ipv6)` lists, best first: the address the machine reaches the internet from (the
source address of its default route, found with an unconnected UDP socket: `connect` on UDP sends
nothing), every other address of its interfaces (Linux: `SIOCGIFADDR` per interface,
`/proc/net/if_inet6`), what its host name resolves to, and the loopback address last. Link-local
addresses are left out (they need a scope to be dialed). Resolving only the host name, as before,
gives 127.0.1.1 on a usual Debian or Ubuntu machine: an address no other machine can dial.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from pathlib import Path

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
_PROBE = {socket.AF_INET: "198.51.100.1", socket.AF_INET6: "2001:db8::1"}  # documentation ranges


def _default_route_address(family: socket.AddressFamily) -> str | None:
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((_PROBE[family], 9))
        return str(probe.getsockname()[0])
    return None


def _interface_addresses_v4() -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    import fcntl

    found = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):  # an interface without an IPv4 address
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
                found.append(socket.inet_ntoa(reply[20:24]))
    return found


def _interface_addresses_v6() -> list[str]:
    found = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            digits = line.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(digits))))
    return found


def _resolved(family: socket.AddressFamily) -> list[str]:
    with contextlib.suppress(OSError):
        return [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, family)]
    return []


def local_addresses(ipv6: bool) -> list[str]:
    """This machine's addresses of one family, best first (see the module docstring)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    interfaces = _interface_addresses_v6() if ipv6 else _interface_addresses_v4()
    candidates = [_default_route_address(family), *interfaces, *_resolved(family)]
    usable: list[str] = []
    loopback: list[str] = []
    for text in candidates:
        if text is None:
            continue
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.is_link_local or address.is_unspecified:
            continue
        (loopback if address.is_loopback else usable).append(str(address))
    loopback.append("::1" if ipv6 else "127.0.0.1")
    return list(dict.fromkeys(usable + sorted(loopback)))


__all__ = ["local_addresses"]
