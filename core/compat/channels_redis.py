"""channels_redis: jobstream's channel layer, the pub/sub layer tuned for progress streams.

`JobStreamChannelLayer` is channels-redis's `RedisPubSubChannelLayer` with these changes
(speed; with channels-redis outside the tested range it is the stock layer, and the
pages heal from their own re-reads, docs/architecture.md "Streams that heal"):

- A group message is deserialized once per process, not once per member socket: every
  member gets the same (read-only) dict.
- Each socket's queue is bounded (`LatestWinsQueue`): once behind, a progress frame
  replaces the waiting one of its job, and a full queue drops the frame the newest
  state makes stale. The stock queues grow without bound: overload shows as seconds of delay.
- Direct delivery (`deliver_directly`): a socket that has sent its snapshot takes job
  frames straight from the subscriber task, which awaits each member's push in turn,
  instead of waking one consumer task per socket per frame through Channels' dispatch
  loop (a queue put, a new task and an `asyncio.wait` per message, for every socket).
- The subscriber drains every message already buffered before it yields, retries a lost
  Redis every RECONNECT_DELAY_MAX at most (logged once, not a traceback a second), and
  after redis-py re-subscribed on a new connection asks every direct socket to re-read
  what it may have missed (`SharedReads`: one read per job for all of them); channels
  whose last member left while Redis was away are unsubscribed once it is back.
- A socket's own channel is a queue in its process (`new_local_channel`, `receive_local`),
  with no SUBSCRIBE/UNSUBSCRIBE round trip per socket: frames reach sockets through groups.
- Publishers outside an event loop write packed PUBLISH commands to each shard
  (notifications/publish.py), with the layer's own group channel names and shard hash
  (`group_channel_name`, `shard_index`).

The internals this leans on: `RedisPubSubChannelLayer._get_layer`, `_layers`, `_args`, `_kwargs`;
`RedisPubSubLoopLayer._shards`, `_get_shard`, `_get_group_channel_name`,
`_subscribe_to_channel`; `RedisSingleShardConnection._ensure_redis`, `_do_receiving`,
`_pubsub`, `_subscribed_to`, `_lock`; and `channels_redis.utils._consistent_hash`,
`_wrap_close`, `create_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, _wrap_close, create_pool, decode_hosts
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.compat.patch import Upstream

logger = logging.getLogger(__name__)

# The pinned release series: written against 4.3.0, tested with it.
UPSTREAM = Upstream("channels_redis", package="channels-redis", tested="~=4.3.0")
LAYER = UPSTREAM.speed(
    "jobstream-layer",
    changes="JobStreamChannelLayer subclasses the pub/sub layer's loop layer and shard connection",
    why="frames then reach each socket through Channels' dispatch loop, unbounded queues and no resync",
)

CONSUMER_QUEUE_LIMIT = 16  # messages waiting per socket; past it the stalest progress frame goes
BEHIND = 4  # waiting messages from which a socket counts as behind and its progress frames coalesce
DRAIN_MAX = 1000  # messages taken from the subscriber socket per pass of the event loop
# Seconds between attempts to reach Redis again, doubling from the first to the cap.
# Sockets must show the true state within 5 s of Redis's return, and an attempt costs
# one refused connect, so the cap stays at a second.
RECONNECT_DELAY_FIRST = 0.05
RECONNECT_DELAY_MAX = 1.0

T = TypeVar("T")
# Hands a frame to a socket; what it returns, when not None, the subscriber awaits (a
# write that must wait), so a frame written at once costs no coroutine.
Push = Callable[[Any], Awaitable[None] | None]


def fast_layer(layer: object) -> JobStreamChannelLayer | None:
    """The layer when it is jobstream's and in effect; None for any other layer."""
    if isinstance(layer, JobStreamChannelLayer) and LAYER.active:
        return layer
    return None


def group_channel_name(prefix: str, group: str) -> str:
    """The Redis channel a group's messages are published on, under the layer's `prefix`
    (RedisPubSubLoopLayer._get_group_channel_name)."""
    return f"{prefix}__group__{group}"


def shard_index(channel: str, shards: int) -> int:
    """The shard of a Redis channel, as the layer picks it (RedisPubSubLoopLayer._get_shard)."""
    return int(_consistent_hash(channel, shards))


def layer_hosts(layer: JobStreamChannelLayer) -> list[dict[str, Any]]:
    """The layer's Redis hosts as connection keyword arguments, one per shard, in its order."""
    hosts = layer._kwargs.get("hosts", layer._args[0] if layer._args else None)
    return [dict(host) for host in decode_hosts(hosts)]


def layer_prefix(layer: JobStreamChannelLayer) -> str:
    return str(layer._kwargs.get("prefix", "asgi"))


# --- resync after a reconnect ---------------------------------------------------------


class SharedReads:
    """One resync pass: each read (by key) runs once, and every socket asking for the
    same key shares its result, so a thousand sockets on one job cost one query."""

    def __init__(self) -> None:
        self._reads: dict[Hashable, asyncio.Future[Any]] = {}

    @property
    def count(self) -> int:
        return len(self._reads)

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        future = self._reads.get(key)
        if future is None:
            future = asyncio.ensure_future(read())
            self._reads[key] = future
        # shield: one socket going away mid-read must not cancel the others' read.
        result: T = await asyncio.shield(future)
        return result


Resync = Callable[[SharedReads], Awaitable[None]]


@dataclass(frozen=True)
class DirectSocket:
    push: Push
    resync: Resync | None
    push_log: Push | None = None  # a job's log lines (`job.log`), for a stream that shows them


# Sockets of this process fed straight from the subscriber: channel name -> socket.
_DIRECT: dict[str, DirectSocket] = {}

# How many times a subscriber connection of this process came back after losing Redis
# (a stream goes direct when it joins its groups, before its first read, so every
# reconnect after the join reaches it through the resync pass).
_reconnects = 0


def subscriber_reconnects() -> int:
    return _reconnects


def deliver_directly(channel_name: str, push: Push, resync: Resync | None = None, push_log: Push | None = None) -> None:
    """From now on job frames for `channel_name` go to `push` and log lines to `push_log`,
    called by the subscriber (which awaits what they return, if anything), in the order
    they were published; after a reconnect to Redis the layer awaits `resync` to re-read
    what was missed."""
    _DIRECT[channel_name] = DirectSocket(push, resync, push_log)


def stop_direct(channel_name: str) -> None:
    _DIRECT.pop(channel_name, None)


async def resync_direct_sockets() -> None:
    """Every direct socket of this process re-reads its snapshot and sends what is newer."""
    resyncs = [socket.resync for socket in list(_DIRECT.values()) if socket.resync is not None]
    reads = SharedReads()
    results = await asyncio.gather(*(resync(reads) for resync in resyncs), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.error("a socket failed to resync after Redis came back", exc_info=result)
    logger.info("resynced %d socket(s) after Redis came back: %d database read(s)", len(resyncs), reads.count)


# --- a socket's queue -------------------------------------------------------------------


def _is_progress(message: Any) -> bool:
    return isinstance(message, dict) and message.get("type") == "job.frame" and not message.get("terminal")


class LatestWinsQueue:
    """A socket's queue, with the part of asyncio.Queue's interface the layer uses.

    Up to BEHIND waiting messages every change goes out; from then on a progress frame
    replaces a waiting one of the same job (a bar needs only the newest). When full
    (CONSUMER_QUEUE_LIMIT) it drops a frame the newest state makes stale: first the
    oldest frame of a job with a newer one queued, else the oldest non-terminal frame,
    never a terminal one while another can go."""

    dropped = 0
    replaced = 0

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if _is_progress(item) and len(self._items) >= BEHIND and self._replace_older(item):
            return
        if len(self._items) >= CONSUMER_QUEUE_LIMIT:
            self._drop_one(item)
        self._items.append(item)
        self._wake_one()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(waiter)
                if self._items and not waiter.cancelled():
                    self._wake_one()  # woken with an item it will not take: wake the next getter
                raise
        return self._items.popleft()

    def _wake_one(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _replace_older(self, item: Any) -> bool:
        """A waiting progress frame of the same job is stale: the new one takes its place."""
        for index, queued in enumerate(self._items):
            if _is_progress(queued) and queued["job_id"] == item["job_id"]:
                self._items[index] = item
                LatestWinsQueue.replaced += 1
                return True
        return False

    def _drop_one(self, incoming: Any) -> None:
        pending = self._items
        newer: set[str] = {incoming["job_id"]} if _is_progress(incoming) else set()
        superseded = None
        for index in range(len(pending) - 1, -1, -1):
            queued = pending[index]
            if _is_progress(queued):
                if queued["job_id"] in newer:
                    superseded = index
                newer.add(queued["job_id"])
        if superseded is None:
            superseded = next((i for i, queued in enumerate(pending) if _is_progress(queued)), 0)
        del pending[superseded]
        LatestWinsQueue.dropped += 1
        if LatestWinsQueue.dropped % 1000 == 1:
            logger.warning("a slow socket fell behind: %d stale frames dropped so far", LatestWinsQueue.dropped)


# --- the subscriber ---------------------------------------------------------------------


class ResubscribingPubSub(PubSub):
    """redis-py's PubSub, telling its shard each time it re-subscribed on a new connection."""

    def __init__(self, *args: Any, on_resubscribed: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resubscribed = on_resubscribed

    async def on_connect(self, connection: Connection) -> None:
        # redis-py calls this on every connect but the first (the callback is registered
        # after it), after it has re-sent SUBSCRIBE for every channel: a PUBLISH that Redis
        # handles from now on reaches us, and one from before is lost but already in the
        # database. So a read from now on is whole.
        await super().on_connect(connection)
        self.on_resubscribed()


class JobStreamShardConnection(RedisSingleShardConnection):
    _resync_task: asyncio.Task[None] | None = None
    _resync_wanted = False

    def _ensure_redis(self) -> None:
        if self._redis is None:  # type: ignore[has-type]
            pool = create_pool(self.host)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._pubsub = ResubscribingPubSub(pool, on_resubscribed=self._resubscribed)

    def _resubscribed(self) -> None:
        global _reconnects
        _reconnects += 1
        logger.warning("the subscriber is back on Redis (%s): re-subscribed, resyncing sockets", self.host)
        self._resync_wanted = True
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._after_reconnect())

    async def _after_reconnect(self) -> None:
        while self._resync_wanted:  # a reconnect during a pass may have lost more: read again
            self._resync_wanted = False
            await resync_direct_sockets()
        await self._drop_stale_subscriptions()

    async def _drop_stale_subscriptions(self) -> None:
        """Unsubscribes channels whose last member left while Redis was away: that
        UNSUBSCRIBE was lost, and redis-py re-subscribed them on reconnect."""
        layer = self.channel_layer
        for raw in list(self._pubsub.channels):
            channel = raw.decode() if isinstance(raw, bytes) else raw
            async with self._lock:
                # Checked under the lock: a group_add of this very group waits for it,
                # then finds the channel unsubscribed and subscribes it again.
                if channel in layer.channels or channel in layer.groups:
                    continue
                try:
                    await self._pubsub.unsubscribe(channel)
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    return  # Redis went away again: the next reconnect retries
                self._subscribed_to.discard(channel)

    async def _do_receiving(self) -> None:
        # As the stock loop, but it takes every message already buffered before it yields
        # (one message per pass of a busy event loop lets a backlog build up in Redis's
        # output buffer), it hands job frames to direct sockets itself, and a lost Redis is
        # retried every RECONNECT_DELAY_MAX at most and logged once.
        delay = RECONNECT_DELAY_FIRST
        lost = False
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if lost:
                        logger.warning("the subscriber reached Redis again (%s)", self.host)
                        lost, delay = False, RECONNECT_DELAY_FIRST
                    pushes: list[tuple[Push, Any]] = []
                    drained = 0
                    while message is not None:
                        self._route(message, pushes)
                        drained += 1
                        if drained >= DRAIN_MAX:
                            break
                        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                    await _push_all(pushes)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not lost:
                    logger.warning("the subscriber lost Redis (%s): %r; retrying", self.host, exc)
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
            except Exception:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(RECONNECT_DELAY_MAX)

    def _route(self, message: dict[str, Any], pushes: list[tuple[Push, Any]]) -> None:
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        layer = self.channel_layer
        if name in layer.channels:
            targets = [name]
        elif name in layer.groups:
            targets = list(layer.groups[name])
        else:
            return
        decoded = layer.channel_layer.deserialize(message["data"])  # once, for every member
        kind = decoded.get("type") if isinstance(decoded, dict) else None
        direct = kind == "job.frame"
        # A job's log lines go the same way as its frames, so none is overtaken by the job's end.
        if direct or kind == "job.log":
            for channel in targets:
                socket = _DIRECT.get(channel)
                if socket is None:
                    queue = layer.channels.get(channel)
                    if queue is not None:
                        queue.put_nowait(decoded)
                    continue
                push = socket.push if direct else socket.push_log
                if push is not None:  # a stream that shows no log takes none
                    pushes.append((push, decoded))
            return
        for channel in targets:
            queue = layer.channels.get(channel)
            if queue is not None:
                queue.put_nowait(decoded)


async def _push_all(pushes: list[tuple[Push, Any]]) -> None:
    for push, message in pushes:
        try:
            pending = push(message)
            if pending is not None:
                await pending
        except Exception:
            logger.exception("A socket failed to take a job frame")


class JobStreamLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stock: list[Any] = self._shards  # type: ignore[has-type]
        self._shards = [JobStreamShardConnection(shard.host, self) for shard in stock]

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = LatestWinsQueue()
        await self._get_shard(channel).subscribe(channel)

    async def receive(self, channel: str) -> Any:
        # As RedisPubSubLoopLayer.receive, minus the deserialization (done on arrival).
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        queue = self.channels[channel]
        try:
            return await queue.get()
        except (TimeoutError, asyncio.CancelledError, GeneratorExit):
            # The consumer is exiting: unsubscribe, as the stock layer does.
            if channel in self.channels:
                del self.channels[channel]
                try:
                    await self._get_shard(channel).unsubscribe(channel)
                except BaseException:
                    logger.exception("Unexpected exception while cleaning-up channel:")
            raise

    async def new_local_channel(self, prefix: str = "specific.") -> str:
        """As `new_channel`, for a channel that only this process feeds (a socket's own,
        which frames reach through its groups' subscriptions): a queue here and no Redis
        subscription, so no SUBSCRIBE when a socket opens and no UNSUBSCRIBE when it
        closes, round trips that would queue up in front of other jobs' frames when many
        sockets close together."""
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"  # RedisPubSubLoopLayer.new_channel's names
        self.channels[channel] = LatestWinsQueue()
        return channel

    async def receive_local(self, channel: str) -> Any:
        """As `receive`, for a channel made by `new_local_channel`."""
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = LatestWinsQueue()
        try:
            return await queue.get()
        except (TimeoutError, asyncio.CancelledError, GeneratorExit):
            self.channels.pop(channel, None)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        try:
            await super().group_discard(group, channel)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # The member is gone from the group here; the Redis subscription goes once
            # Redis is back (JobStreamShardConnection._drop_stale_subscriptions).
            logger.warning("leaving group %s while Redis is away (%r): unsubscribing later", group, exc)


class JobStreamChannelLayer(RedisPubSubChannelLayer):
    """The layer settings.CHANNEL_LAYERS names; the stock one when LAYER is off."""

    def _get_layer(self) -> Any:
        if not LAYER.active:
            return super()._get_layer()
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = JobStreamLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer

    async def new_local_channel(self) -> str:
        layer: JobStreamLoopLayer = self._get_layer()
        return await layer.new_local_channel()

    async def receive_local(self, channel: str) -> Any:
        layer: JobStreamLoopLayer = self._get_layer()
        return await layer.receive_local(channel)


PATCHES = (LAYER,)
