"""The client's address, for limits per client address (jobs/quotas.py).

It is the peer's address, unless the peer is one of TRUSTED_PROXIES (addresses or CIDR
networks): then it is the rightmost address of `X-Forwarded-For` that is not a trusted
proxy, since each proxy appends the address it received from and only the proxies' own
entries can be believed. A client that sends its own `X-Forwarded-For` straight to
daphne is not believed at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_FOR = b"x-forwarded-for"  # ASGI header names are lower-case bytes
# What per-address counts use for a peer that is not an IP address (a Unix socket, a
# test's in-process communicator): such clients share one count.
UNKNOWN_ADDRESS = "unknown"


def client_address(scope_or_request: HttpRequest | Mapping[str, Any]) -> str | None:
    """The client's address as text (IPv4-mapped IPv6 addresses as IPv4), or None when
    the peer is unknown (a Unix socket) or not an IP address."""
    if isinstance(scope_or_request, Mapping):  # an ASGI scope
        client = scope_or_request.get("client")
        peer = client[0] if client else None
        headers = scope_or_request.get("headers", ())
        forwarded = ", ".join(value.decode("latin-1") for name, value in headers if name == FORWARDED_FOR)
    else:
        peer = scope_or_request.META.get("REMOTE_ADDR")
        forwarded = scope_or_request.META.get("HTTP_X_FORWARDED_FOR", "")
    address = parse_address(peer)
    if address is None:
        return None
    networks = trusted_proxies(tuple(settings.TRUSTED_PROXIES))
    if is_trusted(address, networks):
        address = _rightmost_untrusted(forwarded.split(","), networks) or address
    return str(address)


def parse_address(value: object) -> IPAddress | None:
    """An IP address, IPv4-mapped IPv6 made IPv4; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=8)
def trusted_proxies(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES as networks; a bad entry raises ValueError naming it."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network (e.g. 10.0.0.5 or 10.0.0.0/8)."
            ) from None
    return tuple(networks)


def is_trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def _rightmost_untrusted(hops: list[str], networks: tuple[IPNetwork, ...]) -> IPAddress | None:
    """The last hop of X-Forwarded-For that is not a trusted proxy; the first hop when
    all are trusted (a client inside the proxies' own network). None when an entry on
    the way is not an address (only the peer is known then) or there is no entry."""
    address = None
    for hop in reversed(hops):
        if not hop.strip():
            continue
        address = parse_address(hop)
        if address is None or not is_trusted(address, networks):
            return address
    return address
