"""The WebSocket origin check: a handshake's `Origin` must be an allowed origin exactly,
in scheme, host and port (docs/contract.md#websocket).

The allowed origins of a handshake are the origin it is served on (the scope's scheme,
`ws` as `http` and `wss` as `https`, and its `Host` header, which ALLOWED_HOSTS must
allow) and each of CSRF_TRUSTED_ORIGINS (`https://*.example.com` takes the subdomains of
example.com, as Django's CSRF check does). Channels' `AllowedHostsOriginValidator`
compares the host alone, so a page on `http://localhost:3000` would pass for a site on
`http://localhost:8000`, and its sockets carry the owner's cookies there. A handshake
with no `Origin`, a `null` one, or one that is not a plain http(s) origin is refused as
a foreign one: HTTP 403, before anything else runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}
SCOPE_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}  # a socket's scheme as its page's


class WebOrigin(NamedTuple):
    scheme: str
    host: str  # lower case; an IPv6 address without its brackets
    port: int


def parse_origin(value: str) -> WebOrigin | None:
    """`scheme://host[:port]` as a WebOrigin; None for anything else (`null`, a path, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return WebOrigin(scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme])


def served_origin(scope: dict[str, Any]) -> WebOrigin | None:
    """The origin the handshake was made to; None when its Host is missing or not in ALLOWED_HOSTS."""
    scheme = SCOPE_SCHEMES.get(str(scope.get("scheme", "ws")))
    host = _header(scope, b"host")
    if scheme is None or host is None:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return parse_origin(f"{scheme}://{host}")


def origin_allowed(scope: dict[str, Any], origin: WebOrigin) -> bool:
    """Whether a parsed `Origin` is the served origin or one of CSRF_TRUSTED_ORIGINS."""
    if origin == served_origin(scope):
        return True
    return any(_trusted_match(origin, trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS)


def _trusted_match(origin: WebOrigin, trusted: str) -> bool:
    wildcard = "://*." in trusted
    pattern = parse_origin(trusted.replace("://*.", "://", 1) if wildcard else trusted)
    if pattern is None or (origin.scheme, origin.port) != (pattern.scheme, pattern.port):
        return False
    return is_same_domain(origin.host, f".{pattern.host}") if wildcard else origin.host == pattern.host


def _allowed_hosts() -> list[str]:
    hosts: list[str] = settings.ALLOWED_HOSTS
    if settings.DEBUG and not hosts:
        return [".localhost", "127.0.0.1", "[::1]"]  # Django's own fallback under DEBUG
    return hosts


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("latin1"))
            except UnicodeDecodeError:
                return None
    return None


class ExactOriginValidator:
    """ASGI middleware for WebSocket scopes: the inner application for an allowed
    `Origin`, Channels' `WebsocketDenier` (HTTP 403) for any other."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("ExactOriginValidator checks WebSocket handshakes only")
        raw = _header(scope, b"origin")
        origin = parse_origin(raw) if raw is not None else None
        if origin is not None and origin_allowed(scope, origin):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
