"""jobstream's channel layer: channels-redis's pub/sub layer, tuned for progress streams.

What changes from `channels_redis.pubsub.RedisPubSubChannelLayer` (channels-redis 4.3,
pinned in requirements.txt; these classes lean on its internals):

- A group message is deserialized once per process, not once per member socket:
  every member's queue gets the same (read-only) dict.
- Each consumer's queue is bounded (CONSUMER_QUEUE_LIMIT). When a consumer falls
  behind, the oldest non-terminal job frame in its queue is dropped: every frame
  carries the job's whole state, so a bar only needs the newest one. The stock layer's
  queues grow without bound, and overload shows up as seconds of delay.
- `publish_group_messages` sends many group messages in one pipelined round trip per
  shard, each serialized once for all its groups (used by notifications/publish.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, _wrap_close, create_pool
from redis import asyncio as aioredis

logger = logging.getLogger(__name__)

CONSUMER_QUEUE_LIMIT = 64  # messages waiting per socket; past it the oldest progress frame goes


class LatestWinsQueue(asyncio.Queue[Any]):
    """A bounded queue that, when full, drops its oldest non-terminal job frame."""

    dropped = 0

    def put_nowait(self, item: Any) -> None:
        if self.qsize() >= CONSUMER_QUEUE_LIMIT:
            self._drop_one()
        super().put_nowait(item)

    def _drop_one(self) -> None:
        pending: deque[Any] = self._queue  # type: ignore[attr-defined]
        for index, queued in enumerate(pending):
            if isinstance(queued, dict) and queued.get("type") == "job.frame" and not queued.get("terminal"):
                del pending[index]
                break
        else:
            pending.popleft()
        LatestWinsQueue.dropped += 1
        if LatestWinsQueue.dropped % 1000 == 1:
            logger.warning("a slow socket fell behind: %d stale frames dropped so far", LatestWinsQueue.dropped)


class JobStreamShardConnection(RedisSingleShardConnection):
    def _receive_message(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
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
        for channel in targets:
            queue = layer.channels.get(channel)
            if queue is not None:
                queue.put_nowait(decoded)


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

    async def publish_group_messages(self, batch: list[tuple[list[str], dict[str, Any]]]) -> None:
        """Sends each message to its groups: one pipelined round trip per shard."""
        layer = self._get_layer()
        clients = _publish_clients(layer)
        pipelines: dict[int, Any] = {}
        for groups, message in batch:
            data = self.serialize(message)
            for group in groups:
                channel = layer._get_group_channel_name(group)
                index = _consistent_hash(channel, len(clients))
                if index not in pipelines:
                    pipelines[index] = clients[index].pipeline(transaction=False)
                pipelines[index].publish(channel, data)
        for pipe in pipelines.values():
            await pipe.execute()


def _publish_clients(layer: JobStreamLoopLayer) -> list[Any]:
    """One Redis client per shard for publishing, kept for the loop's life."""
    clients: list[Any] | None = getattr(layer, "_publish_clients", None)
    if clients is None:
        clients = [aioredis.Redis(connection_pool=create_pool(shard.host)) for shard in layer._shards]
        layer._publish_clients = clients
    return clients
