"""jobstream's channel layer: channels-redis's pub/sub layer, tuned for progress streams.

What changes from `channels_redis.pubsub.RedisPubSubChannelLayer` (channels-redis 4.3,
pinned in requirements.txt; these classes lean on its internals):

- A group message is deserialized once per process, not once per member socket:
  every member's queue gets the same (read-only) dict.
- Each consumer's queue is bounded (CONSUMER_QUEUE_LIMIT). When a consumer falls
  behind, the oldest non-terminal job frame in its queue is dropped: every frame
  carries the job's whole state, so a bar only needs the newest one. The stock layer's
  queues grow without bound, and overload shows up as seconds of delay.
- A socket that has sent its snapshot takes job frames straight from the subscriber
  (`deliver_directly`): the subscriber task awaits each member's send in turn,
  instead of waking one consumer task per socket per frame. Channels' dispatch loop
  (a new task and an `asyncio.wait` per message) was most of daphne's cost per frame.
- `publish_group_messages` sends many group messages in one pipelined round trip per
  shard, each serialized once for all its groups (used by notifications/publish.py).
- Streams heal after Redis comes back (docs/architecture.md, "Streams that heal").
  redis-py re-subscribes a pub/sub connection when it reconnects, but whatever was
  published meanwhile is gone: the subscriber then asks every direct socket of the
  process to re-read its snapshot (`resync`), sharing one read per job. The
  subscriber retries a lost connection every RECONNECT_DELAY_MAX at most, and
  subscriptions that could not be dropped while Redis was away go once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.sentinel
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, _wrap_close, create_pool, decode_hosts
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

CONSUMER_QUEUE_LIMIT = 16  # messages waiting per socket; past it the oldest progress frame goes
BEHIND = 4  # waiting messages from which a socket counts as behind and progress frames coalesce
DRAIN_MAX = 1000  # messages taken from the subscriber socket per pass of the event loop
# Seconds between attempts to reach Redis again: doubling from the first to the cap.
# Sockets must show the true state within 5 s of Redis's return (issue 5), and an
# attempt costs one refused connect, so the cap stays at a second.
RECONNECT_DELAY_FIRST = 0.05
RECONNECT_DELAY_MAX = 1.0
PUBLISH_TIMEOUT = 1.0  # seconds a blocking publish (or its connect) may wait on Redis before it fails

T = TypeVar("T")
Push = Callable[[Any], Awaitable[None]]


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


# Sockets of this process fed straight from the subscriber: channel name -> socket.
_DIRECT: dict[str, DirectSocket] = {}

# How many times a subscriber connection of this process came back after losing
# Redis. A socket that joined its groups before a reconnect and went direct after it
# missed the resync pass, and resyncs itself (see JobStreamConsumer.go_direct).
_reconnects = 0


def subscriber_reconnects() -> int:
    return _reconnects


def deliver_directly(channel_name: str, push: Push, resync: Resync | None = None) -> None:
    """From now on job frames for `channel_name` go to `push`, awaited by the subscriber;
    after a reconnect to Redis the layer awaits `resync` to re-read what was missed."""
    _DIRECT[channel_name] = DirectSocket(push, resync)


def stop_direct(channel_name: str) -> None:
    _DIRECT.pop(channel_name, None)


def _is_progress(message: Any) -> bool:
    return isinstance(message, dict) and message.get("type") == "job.frame" and not message.get("terminal")


class LatestWinsQueue(asyncio.Queue[Any]):
    """A socket's queue. Once it is behind (BEHIND waiting), a progress frame replaces a
    waiting one of the same job (a bar needs only the newest); up to then every change
    goes out. When full it drops a frame the newest state makes stale:
    first the oldest frame of a job with a newer one queued, else the oldest
    non-terminal frame, never a terminal one while another can go."""

    dropped = 0
    replaced = 0

    def put_nowait(self, item: Any) -> None:
        if _is_progress(item) and self.qsize() >= BEHIND and self._replace_older(item):
            return
        if self.qsize() >= CONSUMER_QUEUE_LIMIT:
            self._drop_one(item)
        super().put_nowait(item)

    def _replace_older(self, item: Any) -> bool:
        """A waiting progress frame of the same job is stale: the new one takes its place."""
        pending: deque[Any] = self._queue  # type: ignore[attr-defined]
        for index, queued in enumerate(pending):
            if _is_progress(queued) and queued["job_id"] == item["job_id"]:
                pending[index] = item
                LatestWinsQueue.replaced += 1
                return True
        return False

    def _drop_one(self, incoming: Any) -> None:
        pending: deque[Any] = self._queue  # type: ignore[attr-defined]
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


async def resync_direct_sockets() -> None:
    """Every direct socket of this process re-reads its snapshot and sends what is newer."""
    resyncs = [socket.resync for socket in list(_DIRECT.values()) if socket.resync is not None]
    reads = SharedReads()
    results = await asyncio.gather(*(resync(reads) for resync in resyncs), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.error("a socket failed to resync after Redis came back", exc_info=result)
    logger.info("resynced %d socket(s) after Redis came back: %d database read(s)", len(resyncs), reads.count)


class ResubscribingPubSub(PubSub):
    """redis-py's PubSub, telling its shard each time it re-subscribed on a new connection."""

    def __init__(self, *args: Any, on_resubscribed: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resubscribed = on_resubscribed

    async def on_connect(self, connection: Connection) -> None:
        # redis-py calls this on every connect but the first (the callback is
        # registered after it), after which it has re-sent SUBSCRIBE for every
        # channel: a PUBLISH that Redis handles from now on reaches us, and one from
        # before is lost but already in the database. So a read from now on is whole.
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
        # As the stock loop, but it takes every message already buffered before it
        # yields (one message per pass of a busy event loop let a backlog build up in
        # Redis's output buffer), and it hands job frames to direct sockets itself.
        # A lost Redis is retried every RECONNECT_DELAY_MAX at most and logged once,
        # not with a traceback a second. (The stock loop also ended for good on a
        # TimeoutError, a leftover of asyncio.TimeoutError, which is TimeoutError now.)
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
        direct = isinstance(decoded, dict) and decoded.get("type") == "job.frame"
        for channel in targets:
            socket = _DIRECT.get(channel) if direct else None
            if socket is not None:
                pushes.append((socket.push, decoded))
                continue
            queue = layer.channels.get(channel)
            if queue is not None:
                queue.put_nowait(decoded)


async def _push_all(pushes: list[tuple[Push, Any]]) -> None:
    for push, message in pushes:
        try:
            await push(message)
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

    async def receive_local(self, channel: str) -> Any:
        """As `receive`, for a channel that only this process feeds: a socket's own
        channel, which frames reach through its groups' subscriptions (and then
        straight, see `deliver_directly`). A queue here and no Redis subscription: no
        SUBSCRIBE when a socket opens and no UNSUBSCRIBE when it closes, round trips
        that queued up in front of other jobs' frames when many sockets closed together."""
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
    def _get_layer(self) -> JobStreamLoopLayer:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = JobStreamLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer

    async def receive_local(self, channel: str) -> Any:
        return await self._get_layer().receive_local(channel)

    async def publish_group_messages(self, batch: list[tuple[list[str], dict[str, Any]]]) -> None:
        """Sends each message to its groups: one pipelined round trip per shard.

        The commands are packed here, not through redis-py's `Pipeline`, which copies
        its table of reply callbacks into a new dict per pipeline and runs each command
        through several layers: that was most of a worker's CPU per frame."""
        clients = _publish_clients(self._get_layer())
        for index, packed in self._packed_by_shard(batch, len(clients)).items():
            await _send_packed(clients[index], b"".join(packed), len(packed))

    def publish_group_messages_blocking(self, batch: list[tuple[list[str], dict[str, Any]]]) -> None:
        """The same from plain threads, one at a time (the Publisher holds a lock), with
        replies off: what notifications/publish.py uses; the coroutine above serves
        callers on an event loop.

        An event loop in a thread of a busy worker pays a GIL hand-over at each of its
        steps (the wake-up, the write, each reply); here a batch is one blocking write
        per shard on a connection that told Redis not to answer (`ShardWriter`), and
        nothing is read back."""
        writers = self._shard_writers()
        for index, packed in self._packed_by_shard(batch, len(writers)).items():
            writers[index].send(b"".join(packed))

    def _packed_by_shard(self, batch: list[tuple[list[str], dict[str, Any]]], shards: int) -> dict[int, list[bytes]]:
        """PUBLISH commands per shard; each message serialized once for all its groups."""
        prefix = self._kwargs.get("prefix", "asgi")
        commands: dict[int, list[bytes]] = {}
        for groups, message in batch:
            data = self.serialize(message)
            for group in groups:
                channel = f"{prefix}__group__{group}"  # RedisPubSubLoopLayer._get_group_channel_name
                index = _consistent_hash(channel, shards)
                commands.setdefault(index, []).append(_packed_publish(channel, data))
        return commands

    def _shard_writers(self) -> list[ShardWriter]:
        pid = os.getpid()
        owned: tuple[int, list[ShardWriter]] | None = self.__dict__.get("_writers")  # not the layer proxy
        if owned is None or owned[0] != pid:  # a fork gets connections of its own
            hosts = self._kwargs.get("hosts", self._args[0] if self._args else None)
            owned = (pid, [ShardWriter(_blocking_pool(host)) for host in decode_hosts(hosts)])
            self._writers = owned
        return owned[1]


class ShardWriter:
    """A connection to one shard on which Redis sends no replies (`CLIENT REPLY OFF`,
    sent again on every reconnect): PUBLISH answers only with a count of receivers,
    which a publisher has no use for, and reading it costs a system call and a parse.

    A connection that Redis dropped (a restart) fails on a write; the write is tried
    once more on a new connection. Writes that the kernel took before it learnt the
    connection was gone are lost, as anything published while Redis is away is: the
    subscribers heal from snapshots when they reconnect (docs/architecture.md)."""

    REPLY_OFF = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n"

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.connection = pool.make_connection()
        self.connection.register_connect_callback(self._replies_off)

    def _replies_off(self, connection: Any) -> None:
        connection.send_packed_command([self.REPLY_OFF], check_health=False)

    def send(self, packed: bytes) -> None:
        for attempt in (1, 2):
            try:
                self.connection.send_packed_command([packed], check_health=False)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self.connection.disconnect()
                if attempt == 2:
                    raise


def _blocking_pool(host: dict[str, Any]) -> redis.ConnectionPool:
    """A blocking connection pool for a channel-layer host, as channels-redis's
    `create_pool` builds an asyncio one. A write that Redis does not take within
    PUBLISH_TIMEOUT fails (and is logged) rather than stalling the publisher."""
    host = {"socket_timeout": PUBLISH_TIMEOUT, "socket_connect_timeout": PUBLISH_TIMEOUT, **host}
    if "address" in host:
        return redis.ConnectionPool.from_url(host.pop("address"), **host)
    master_name = host.pop("master_name", None)
    if master_name is not None:
        sentinel = redis.sentinel.Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None))
        return redis.sentinel.SentinelConnectionPool(master_name, sentinel, **host)
    return redis.ConnectionPool(**host)


def _packed_publish(channel: str, data: bytes) -> bytes:
    """`PUBLISH channel data` in Redis's wire protocol (RESP)."""
    name = channel.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(data), data)


async def _send_packed(client: Any, packed: bytes, replies: int) -> None:
    """Writes packed commands on one pooled connection and reads their replies.

    A connection that Redis dropped meanwhile (a restart) is replaced once, as
    redis-py's own pipeline does; a second failure is the caller's to log."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        for attempt in (1, 2):
            try:
                await connection.send_packed_command([packed], check_health=False)
                for _ in range(replies):
                    await connection.read_response()
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await connection.disconnect()
                if attempt == 2:
                    raise
    finally:
        await pool.release(connection)


def _publish_clients(layer: JobStreamLoopLayer) -> list[Any]:
    """One Redis client per shard for publishing, kept for the loop's life."""
    clients: list[Any] | None = getattr(layer, "_publish_clients", None)
    if clients is None:
        clients = [aioredis.Redis(connection_pool=create_pool(shard.host)) for shard in layer._shards]
        layer._publish_clients = clients
    return clients
