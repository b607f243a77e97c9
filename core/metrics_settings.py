"""The metrics settings read from the environment (docs/deploy.md#metrics); a bad value
stops start-up naming the variable (`metrics_settings_from_env`).

- `METRICS_TOKEN`: the bearer token that may scrape `/metrics`; unset (or empty), no
  token is accepted and only users with `jobs.view_metrics` may read it.
- `WORKER_METRICS_PORT`: the port a worker host serves its workers' figures on; unset
  (or empty), no server is started.
- `WORKER_METRICS_ADDRESS`: the address that server binds (every interface by default:
  Prometheus scrapes it from another host).
- `PROMETHEUS_MULTIPROC_DIR`: where a prefork worker's children write their figures for
  the server in their parent (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import ipaddress
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

METRICS_TOKEN_MIN_LENGTH = 16  # characters: a short token is guessable by anyone who reaches the port
# A header value without spaces or quotes, so no proxy or client reshapes it on the way.
TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~+/=")
PORT_MAX = 65535


def metrics_token(raw: str | None) -> str | None:
    """The token, or None when none is set; ValueError says what is wrong with it."""
    token = (raw or "").strip()
    if not token:
        return None
    if len(token) < METRICS_TOKEN_MIN_LENGTH:
        raise ValueError(f"must be at least {METRICS_TOKEN_MIN_LENGTH} characters long, not {len(token)}")
    if not set(token) <= TOKEN_CHARACTERS:
        raise ValueError("may hold only ASCII letters, digits and -._~+/= (e.g. the output of `openssl rand -hex 32`)")
    return token


def metrics_port(raw: str | None) -> int | None:
    """A TCP port (1-65535), or None when unset; ValueError says what is wrong with it."""
    value = (raw or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= PORT_MAX:
        raise ValueError(f"must be a port number from 1 to {PORT_MAX} (or unset: no server), not {raw!r}")
    return int(value)


def metrics_address(raw: str | None) -> str:
    """An IP address to bind (every IPv4 interface when unset); ValueError otherwise."""
    value = (raw or "").strip()
    if not value:
        return "0.0.0.0"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be an IP address to bind (e.g. 0.0.0.0 or 127.0.0.1), not {raw!r}") from None
    return value


def multiprocess_dir(raw: str | None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it itself at import): when set,
    a directory this process can write; ValueError otherwise. Set but empty, the library
    would write its files to the working directory."""
    if raw is None:
        return None
    path = Path(raw.strip())
    if not raw.strip() or not path.is_dir():
        raise ValueError(f"must name an existing directory (or be unset), not {raw!r}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"must be a directory this process can write, and {raw!r} is not")
    return str(path)


@dataclass(frozen=True)
class MetricsSettings:
    token: str | None
    worker_port: int | None
    worker_address: str
    multiprocess_dir: str | None


def metrics_settings_from_env(environ: Mapping[str, str]) -> MetricsSettings:
    """The four settings, each checked; a bad one raises RuntimeError naming its variable."""

    def parsed(name: str, parse: Callable[[str | None], T]) -> T:
        try:
            return parse(environ.get(name))
        except ValueError as exc:
            raise RuntimeError(f"{name} {exc}.") from None

    return MetricsSettings(
        token=parsed("METRICS_TOKEN", metrics_token),
        worker_port=parsed("WORKER_METRICS_PORT", metrics_port),
        worker_address=parsed("WORKER_METRICS_ADDRESS", metrics_address),
        multiprocess_dir=parsed("PROMETHEUS_MULTIPROC_DIR", multiprocess_dir),
    )
