"""The stream quotas: at most JOB_QUOTA_SOCKETS WebSockets and SSE streams open at once per
owner, and STREAM_QUOTA_PER_IP per client address (core/client_address.py), counted over
every daphne process in Redis. A stream takes an owner slot and an address slot
(`stream_slots_acquire`), or neither.

Each owner has a sorted set `jobstream.sockets.<owner key>` (each address
`jobstream.sockets.ip.<address>`) in the main Redis (settings.REDIS_HOST: the one at
REDIS_URL, or the Sentinel master; never a channel-layer shard):
one member per open socket (its channel name), scored with the time it expires. Taking
a slot and counting happen in one Lua script, on Redis' clock, so two daphne processes
cannot both take the last slot and their clocks need not agree. Each process refreshes
its own sockets' entries every REFRESH_EVERY seconds; the entries of a process that
died without closing its sockets expire after SLOT_TTL and stop counting.

If Redis cannot be reached the socket is let in (logged): the quota protects the
service, and turning every watcher away while Redis restarts would hurt it more. The
refresh puts such sockets into the count once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from channels_redis.utils import create_pool
from django.conf import settings
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from jobs.owners import Owner

logger = logging.getLogger(__name__)

SLOT_TTL = 60.0  # seconds a socket's entry lives unless refreshed: a crashed daphne's sockets free up within this
REFRESH_EVERY = 20.0  # seconds between refreshes: three chances per SLOT_TTL, so one slow pass loses nothing
REDIS_TIMEOUT = 2.0  # seconds for a quota round trip before the socket is let in anyway
KEY_PREFIX = "jobstream.sockets."

# KEYS[1]: the owner's set. ARGV: limit, ttl in ms, socket id.
# 1 when the socket holds a slot now (taken, or already held), 0 when none is free.
_ACQUIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: the owner's set. ARGV: ttl in ms, then the socket ids this process holds.
_REFRESH = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expires = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
"""


def socket_slots_key(owner_key: str) -> str:
    """The Redis key of an owner's socket set (`Owner.key`: `u.<id>` or `s.<token>`)."""
    return f"{KEY_PREFIX}{owner_key}"


def _counted(owner: Owner | None) -> bool:
    return owner is not None and not owner.bypasses_quotas and settings.JOB_QUOTA_SOCKETS > 0


async def socket_slot_acquire(*, owner: Owner | None, socket_id: str) -> bool:
    """Takes one of the owner's socket slots; False when they are all in use.

    True without counting for no owner (a visitor without a session owns nothing to
    watch), for an owner with `jobs.bypass_quotas`, and while the quota is off (JOB_QUOTA_SOCKETS=0).
    """
    if not _counted(owner):
        return True
    assert owner is not None
    return await _slots().acquire(socket_slots_key(owner.key), socket_id, settings.JOB_QUOTA_SOCKETS)


async def socket_slot_release(*, owner: Owner | None, socket_id: str) -> None:
    """Gives the socket's slot back; nothing when it holds none."""
    slots = _BY_LOOP.get(_loop_key())
    if owner is not None and slots is not None:
        await slots.release(socket_slots_key(owner.key), socket_id)


def address_slots_key(address: str) -> str:
    """The Redis key of a client address's stream set."""
    return f"{KEY_PREFIX}ip.{address}"


def _address_counted(owner: Owner | None) -> bool:
    return not (owner is not None and owner.bypasses_quotas) and settings.STREAM_QUOTA_PER_IP > 0


async def stream_slots_acquire(*, owner: Owner | None, address: str, stream_id: str) -> bool:
    """Takes an owner slot and a slot of the client address for one stream (a WebSocket or
    an SSE stream); False, holding neither, when either quota is full."""
    if not await socket_slot_acquire(owner=owner, socket_id=stream_id):
        return False
    if not _address_counted(owner):
        return True
    if await _slots().acquire(address_slots_key(address), stream_id, settings.STREAM_QUOTA_PER_IP):
        return True
    await socket_slot_release(owner=owner, socket_id=stream_id)
    return False


async def stream_slots_release(*, owner: Owner | None, address: str, stream_id: str) -> None:
    """Gives back what `stream_slots_acquire` took; nothing for what the stream holds not."""
    await socket_slot_release(owner=owner, socket_id=stream_id)
    slots = _BY_LOOP.get(_loop_key())
    if slots is not None:
        await slots.release(address_slots_key(address), stream_id)


# --- one set of slots per event loop ---------------------------------------------
# An asyncio Redis client belongs to the loop that made it: daphne has one loop, the
# tests one per test.


@dataclass(eq=False)
class _LoopSlots:
    client: aioredis.Redis
    held: dict[str, set[str]] = field(default_factory=dict)  # key -> this process's socket ids
    refresher: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.acquire_script = self.client.register_script(_ACQUIRE)
        self.refresh_script = self.client.register_script(_REFRESH)

    async def acquire(self, key: str, socket_id: str, limit: int) -> bool:
        try:
            admitted = bool(await self.acquire_script(keys=[key], args=[limit, _ttl_ms(), socket_id]))
        except (RedisError, OSError):
            logger.warning("socket quota: Redis unreachable, socket %s let in uncounted", socket_id, exc_info=True)
            admitted = True
        if admitted:
            self.held.setdefault(key, set()).add(socket_id)
            if self.refresher is None or self.refresher.done():
                self.refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        return admitted

    async def release(self, key: str, socket_id: str) -> None:
        ids = self.held.get(key)
        if ids is None or socket_id not in ids:
            return
        ids.discard(socket_id)
        if not ids:
            del self.held[key]
        if not self.held and self.refresher is not None:
            self.refresher.cancel()
            self.refresher = None
        try:
            await self.client.zrem(key, socket_id)
        except (RedisError, OSError):
            logger.warning("socket quota: Redis unreachable, slot of %s left to expire", socket_id, exc_info=True)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                await self.refresh()
            except (RedisError, OSError):
                logger.warning("socket quota: refresh failed; retrying in %.0f s", REFRESH_EVERY, exc_info=True)

    async def refresh(self) -> None:
        """Pushes back the expiry of every socket this process holds, in one round trip."""
        if not self.held:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, ids in list(self.held.items()):
                await self.refresh_script(keys=[key], args=[_ttl_ms(), *sorted(ids)], client=pipe)
            await pipe.execute()


def _ttl_ms() -> int:
    return int(SLOT_TTL * 1000)


# (loop, REDIS_HOST) -> slots; a closed loop's entry goes at the next lookup.
_BY_LOOP: dict[tuple[asyncio.AbstractEventLoop, str], _LoopSlots] = {}


def _loop_key() -> tuple[asyncio.AbstractEventLoop, str]:
    # The settings may change (tests): another host, other slots.
    return asyncio.get_running_loop(), repr(sorted(settings.REDIS_HOST.items()))


def _slots() -> _LoopSlots:
    key = _loop_key()
    slots = _BY_LOOP.get(key)
    if slots is None:
        for stale in [entry for entry in _BY_LOOP if entry[0].is_closed()]:
            del _BY_LOOP[stale]
        # A URL or a Sentinel master, as the channel layer takes a host; the quota's own
        # timeouts win, so a Redis gone quiet lets a socket in after REDIS_TIMEOUT.
        pool = create_pool(
            {**settings.REDIS_HOST, "socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT}
        )
        slots = _BY_LOOP[key] = _LoopSlots(aioredis.Redis(connection_pool=pool))
    return slots
