"""Where Redis is, read from the environment: one Redis, channel-layer shards, or Sentinel.

- `REDIS_URL` (default `redis://127.0.0.1:6379/0`): the one Redis of everything, unless
  one of the others says otherwise.
- `CHANNEL_REDIS_URLS`: comma-separated Redis URLs the channel layer shards its groups
  over (channels-redis hashes each group channel's name onto the list), in the same
  order in every process. Quotas, the broker and results stay on `REDIS_URL`.
- `REDIS_SENTINELS` (`host:port,…`), with `REDIS_SENTINEL_MASTER` (default `mymaster`,
  Redis's own example name), `REDIS_PASSWORD` (the master's), `REDIS_SENTINEL_PASSWORD`
  (the Sentinels' own, when they require one) and `REDIS_DB` (default 0): every use of
  Redis goes to the master the Sentinels name, and `REDIS_URL` is not used. An explicit
  `CELERY_BROKER_URL` or `CELERY_RESULT_BACKEND` still wins for the broker or results.

A malformed value stops start-up (RuntimeError) naming the variable, the value (never a
password) and the form expected. `redis_topology_from_env` reads; `RedisTopology` says
what each user of Redis connects to, in the forms channels-redis, redis-py, kombu and
Celery take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SENTINEL_MASTER = "mymaster"  # the name Redis's sentinel.conf example monitors
URL_SCHEMES = ("redis", "rediss", "unix")
# Seconds a Sentinel may take to answer which Redis is the master: without a bound a
# Sentinel host that drops packets stalls a publish, a probe or a submit for minutes.
SENTINEL_TIMEOUT = 2.0
# Only with REDIS_SENTINELS: each alone names no Redis to apply to.
SENTINEL_ONLY = ("REDIS_SENTINEL_MASTER", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD", "REDIS_DB")

Host = dict[str, Any]  # a channels-redis host: connection keywords, {"address": url}, or a Sentinel master


@dataclass(frozen=True)
class Sentinels:
    """A Sentinel-managed master and how to reach it."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    password: str | None  # the master's (requirepass)
    sentinel_password: str | None  # the Sentinels' own (sentinel requirepass)
    db: int

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Keywords of the connections to the Sentinels themselves (redis.sentinel.Sentinel)."""
        kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def host(self) -> Host:
        """The master as channels-redis takes a host (channels_redis.utils.create_pool builds a
        SentinelConnectionPool from it; notifications/publish.py a blocking one)."""
        host: Host = {
            "sentinels": list(self.addresses),
            "master_name": self.master,
            "sentinel_kwargs": self.sentinel_kwargs(),
            "db": self.db,
        }
        if self.password is not None:
            host["password"] = self.password
        return host

    def celery_url(self) -> str:
        """kombu's and Celery's form: `sentinel://:password@host:port/db` per Sentinel, joined
        by `;`. Both read the password and db of the first URL; kombu moves on to the next
        URL when a connection fails, so each carries them."""
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return ";".join(f"sentinel://{auth}{_netloc(host, port)}/{self.db}" for host, port in self.addresses)

    def celery_transport_options(self) -> dict[str, Any]:
        """`broker_transport_options` and `result_backend_transport_options` for the Sentinels."""
        return {"master_name": self.master, "sentinel_kwargs": self.sentinel_kwargs()}


@dataclass(frozen=True)
class CeleryRedis:
    """A Celery broker or result backend: its URL and the transport options it adds."""

    url: str
    transport_options: dict[str, Any]


@dataclass(frozen=True)
class RedisTopology:
    redis_url: str  # REDIS_URL (unused when sentinels is set)
    shard_urls: tuple[str, ...] = ()  # CHANNEL_REDIS_URLS, empty when unset
    sentinels: Sentinels | None = None

    def channel_hosts(self) -> list[Host]:
        """The channel layer's hosts, one per shard, in the order every process lists them."""
        if self.sentinels is not None:
            return [self.sentinels.host()]
        return [{"address": url} for url in self.shard_urls or (self.redis_url,)]

    def main_host(self) -> Host:
        """The Redis of everything that does not shard (socket quotas, health), as a channels-redis host."""
        return self.sentinels.host() if self.sentinels is not None else {"address": self.redis_url}

    def celery(self, explicit_url: str | None) -> CeleryRedis:
        """The broker (or the result backend): its explicit URL (CELERY_BROKER_URL,
        CELERY_RESULT_BACKEND) when set, else the Sentinels, else REDIS_URL."""
        if explicit_url:
            return CeleryRedis(explicit_url, {})
        if self.sentinels is not None:
            return CeleryRedis(self.sentinels.celery_url(), self.sentinels.celery_transport_options())
        return CeleryRedis(self.redis_url, {})


# --- reading the environment ----------------------------------------------------------


def redis_topology_from_env(environ: Mapping[str, str]) -> RedisTopology:
    """The topology the variables describe; RuntimeError naming the first malformed one."""
    redis_url = environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL
    redis_url_check("REDIS_URL", redis_url)
    shard_urls = _shard_urls(environ.get("CHANNEL_REDIS_URLS", ""))
    sentinels = _sentinels(environ)
    if shard_urls and sentinels is not None:
        raise RuntimeError(
            "CHANNEL_REDIS_URLS and REDIS_SENTINELS are both set: one Sentinel master cannot be several "
            "channel-layer shards. Set one: CHANNEL_REDIS_URLS for shards, REDIS_SENTINELS for one "
            "Sentinel-managed Redis."
        )
    return RedisTopology(redis_url=redis_url, shard_urls=shard_urls, sentinels=sentinels)


def redacted_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostinfo}", parts.path, parts.query, parts.fragment))


def redis_url_check(name: str, url: str) -> None:
    """A Redis URL: redis:// or rediss:// with a host and a valid port, or unix:// with a socket path."""

    def malformed(problem: str) -> RuntimeError:
        return RuntimeError(
            f"{name}: {redacted_url(url)!r} {problem}; a Redis URL is redis://[:password@]host[:port][/db], "
            "rediss://… or unix:///path/to/redis.sock."
        )

    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError:
        raise malformed("is not a Redis URL") from None
    if parts.scheme not in URL_SCHEMES:
        raise malformed(f"has the scheme {parts.scheme!r}")
    if parts.scheme == "unix":
        if not parts.path:
            raise malformed("names no socket path")
        return
    if not parts.hostname:
        raise malformed("names no host")
    if port == 0:
        raise malformed("has port 0, not 1 to 65535")
    db = parts.path.strip("/")
    if db and not _is_number(db):
        raise malformed(f"has the database {db!r}, not a number")


def _shard_urls(raw: str) -> tuple[str, ...]:
    if not raw.strip():
        return ()
    urls = [item.strip() for item in raw.split(",")]
    if any(not url for url in urls):
        raise RuntimeError(
            "CHANNEL_REDIS_URLS has an empty item: list Redis URLs separated by single commas "
            "(redis://10.0.0.31:6379/0,redis://10.0.0.32:6379/0)."
        )
    seen: dict[tuple[str, ...], str] = {}
    for url in urls:
        redis_url_check("CHANNEL_REDIS_URLS", url)
        server = _server(url)
        if server in seen:
            # Redis pub/sub ignores the database number: two URLs of one server are one
            # shard twice, and the layer would count a shard that does not exist.
            raise RuntimeError(
                f"CHANNEL_REDIS_URLS lists one Redis twice ({redacted_url(seen[server])!r} and "
                f"{redacted_url(url)!r}; pub/sub channels ignore the database): each shard is a Redis "
                "server of its own."
            )
        seen[server] = url
    return tuple(urls)


def _server(url: str) -> tuple[str, ...]:
    """What tells two Redis servers apart: the socket path, or the host and port."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return ("unix", parts.path)
    return ("tcp", (parts.hostname or "").lower(), str(parts.port or 6379))


def _sentinels(environ: Mapping[str, str]) -> Sentinels | None:
    raw = environ.get("REDIS_SENTINELS", "")
    given = [name for name in SENTINEL_ONLY if environ.get(name, "")]
    if not raw.strip():
        if given:
            raise RuntimeError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set without REDIS_SENTINELS: "
                "they apply only to a Sentinel-managed Redis. Set REDIS_SENTINELS (host:port,…) or unset "
                f"{'it' if len(given) == 1 else 'them'} (a password for a plain Redis goes in REDIS_URL)."
            )
        return None
    addresses = tuple(_sentinel_address(item.strip()) for item in raw.split(","))
    if len(set(addresses)) != len(addresses):
        raise RuntimeError(f"REDIS_SENTINELS: {raw.strip()!r} lists a Sentinel twice; list each host:port once.")
    master = environ.get("REDIS_SENTINEL_MASTER", DEFAULT_SENTINEL_MASTER).strip()
    if not master or any(ch.isspace() for ch in master):
        raise RuntimeError(
            f"REDIS_SENTINEL_MASTER: {master!r} is not a master name; give the name the Sentinels monitor "
            f"(`sentinel monitor <name> …`), or leave it unset for {DEFAULT_SENTINEL_MASTER!r}."
        )
    raw_db = environ.get("REDIS_DB", "").strip() or "0"
    if not _is_number(raw_db):
        raise RuntimeError(f"REDIS_DB: {raw_db!r} is not a database number; give a whole number of 0 or more.")
    return Sentinels(
        addresses=addresses,
        master=master,
        password=environ.get("REDIS_PASSWORD") or None,
        sentinel_password=environ.get("REDIS_SENTINEL_PASSWORD") or None,
        db=int(raw_db),
    )


def _sentinel_address(item: str) -> tuple[str, int]:
    expected = "host:port with a port of 1 to 65535, comma-separated (10.0.0.5:26379,[fd00::5]:26379)"
    if not item:
        raise RuntimeError(f"REDIS_SENTINELS has an empty item: list Sentinels as {expected}.")
    if item.startswith("["):  # an IPv6 address: [addr]:port
        host, _, port = item[1:].partition("]:")
    else:
        host, _, port = item.rpartition(":")
    bracketless_ipv6 = ":" in host and not item.startswith("[")
    if not host or bracketless_ipv6 or not _is_number(port) or not 1 <= int(port) <= 65535:
        raise RuntimeError(f"REDIS_SENTINELS: {item!r} is not a Sentinel address; list them as {expected}.")
    return host, int(port)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²", which int() refuses


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
