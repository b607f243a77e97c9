"""The client address (core/client_address.py): the peer, unless the peer is a trusted
proxy; then the rightmost X-Forwarded-For hop that is not one. Read from a Django
request or an ASGI scope alike."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import RequestFactory, override_settings

from core.client_address import client_address, trusted_proxies


def request(peer: str | None, forwarded_for: str | None = None) -> Any:
    made = RequestFactory().get("/")
    if forwarded_for is not None:
        made.META["HTTP_X_FORWARDED_FOR"] = forwarded_for
    if peer is None:
        del made.META["REMOTE_ADDR"]
    else:
        made.META["REMOTE_ADDR"] = peer
    return made


def scope(peer: str | None, *forwarded_for: str) -> dict[str, Any]:
    headers = [(b"host", b"example.org"), *((b"x-forwarded-for", value.encode()) for value in forwarded_for)]
    return {"type": "http", "client": None if peer is None else [peer, 50000], "headers": headers}


@override_settings(TRUSTED_PROXIES=[])
def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_forwards() -> None:
    assert client_address(request("203.0.113.5", "198.51.100.1")) == "203.0.113.5"
    assert client_address(scope("203.0.113.5", "198.51.100.1")) == "203.0.113.5"


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8", "192.0.2.1"])
@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.1.1.1", "198.51.100.1", "198.51.100.1"),
        # A client's own claim sits left of what the proxy appended: never reached.
        ("10.1.1.1", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # Two proxies: their own hops are skipped.
        ("192.0.2.1", "198.51.100.1, 10.2.2.2", "198.51.100.1"),
        # Every hop trusted: a client inside the proxies' network, the first hop.
        ("10.1.1.1", "10.9.9.9, 10.2.2.2", "10.9.9.9"),
        # A hop that is no address where one must be: only the peer is known.
        ("10.1.1.1", "198.51.100.1, not-an-address", "10.1.1.1"),
        ("10.1.1.1", "", "10.1.1.1"),
        ("10.1.1.1", " 198.51.100.1 ,", "198.51.100.1"),
        ("10.1.1.1", "2001:db8::1", "2001:db8::1"),
        # A peer outside TRUSTED_PROXIES is believed about nothing.
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),
    ],
)
def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client(
    peer: str, forwarded: str, expected: str
) -> None:
    assert client_address(request(peer, forwarded)) == expected
    assert client_address(scope(peer, forwarded)) == expected


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
def test_several_forwarded_for_headers_of_a_scope_read_as_one_list() -> None:
    assert client_address(scope("10.1.1.1", "198.51.100.9", "198.51.100.1, 10.2.2.2")) == "198.51.100.1"


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
def test_an_ipv4_mapped_peer_is_its_ipv4_address_and_can_be_trusted() -> None:
    assert client_address(request("::ffff:10.1.1.1", "198.51.100.1")) == "198.51.100.1"
    assert client_address(request("::ffff:203.0.113.5")) == "203.0.113.5"


def test_no_peer_or_a_peer_that_is_no_ip_address_is_unknown() -> None:
    assert client_address(request(None)) is None
    assert client_address(scope(None)) is None
    assert client_address(request("unix:/run/daphne.sock")) is None


def test_a_bad_trusted_proxy_entry_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an IP address or CIDR network")):
        trusted_proxies(("10.0.0.0/33",))
