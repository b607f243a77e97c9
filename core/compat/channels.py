"""Channels: a WebSocket consumer base without Channels' per-message costs (speed).

`FastPathConsumer` is `AsyncWebsocketConsumer` with three changes, each taken only while
the patch is active (stock Channels behaviour otherwise):

- Its own channel stays in the process (`__call__`): with jobstream's layer
  (core/compat/channels_redis.py) the consumer's channel is a local queue with no Redis
  subscription, since frames reach a socket only through its groups. This repeats
  `AsyncConsumer.__call__` with `new_local_channel`/`receive_local` in place of
  `new_channel`/`receive`.
- No database hop per message (`dispatch`, `websocket_disconnect`): Channels 4.2+ runs
  `aclose_old_connections()` in a worker thread before every handler and again on
  disconnect. A job frame never touches the database, and consumers that do use
  `database_sync_to_async` or the sockets' own database thread
  (notifications/socket_db.py), which look after connections themselves. When many sockets close together, those
  thread hops queue up in front of other jobs' frames.
- No session wrapper after the handshake (`send_past_session_middleware`): Channels'
  `InstanceSessionWrapper.send` saves the session only with `websocket.accept` (and HTTP
  responses) yet reads the lazy session's state on every message; after the accept the
  consumer sends through the wrapped `real_send`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.sessions import InstanceSessionWrapper
from channels.utils import await_many_dispatch

from core.compat import channels_redis
from core.compat.patch import Upstream

# The pinned release series: written against 4.3.2, tested with it.
UPSTREAM = Upstream("channels", package="channels", tested="~=4.3.2")
FAST_PATH = UPSTREAM.speed(
    "consumer-fast-path",
    changes="AsyncConsumer.__call__/dispatch and websocket_disconnect repeated without a Redis channel per "
    "socket, the close_old_connections thread hops and the session wrapper after accept",
    why="every message then takes a worker-thread hop, and every socket a Redis subscription of its own",
)


class FastPathConsumer(AsyncWebsocketConsumer):
    local_channel: str | None = None  # the consumer's own channel, when it is local to the process

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        layer = channels_redis.fast_layer(get_channel_layer(self.channel_layer_alias))
        if layer is None or not FAST_PATH.active:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = layer
        self.channel_name = self.local_channel = await layer.new_local_channel()
        self.channel_receive = functools.partial(layer.receive_local, self.channel_name)
        self.base_send = send
        with contextlib.suppress(StopConsumer):  # the socket closed
            await await_many_dispatch([receive, self.channel_receive], self.dispatch)

    async def dispatch(self, message: dict[str, Any]) -> None:
        if not FAST_PATH.active:
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        if not FAST_PATH.active:
            await super().websocket_disconnect(message)
            return
        await self.disconnect(message["code"])  # the consumer leaves its own groups (no `groups` attribute here)
        raise StopConsumer()

    def send_past_session_middleware(self) -> None:
        """Called once the handshake is accepted: later sends skip the session wrapper."""
        if not FAST_PATH.active:
            return
        wrapper = getattr(self.base_send, "__self__", None)
        if isinstance(wrapper, InstanceSessionWrapper):
            self.base_send = wrapper.real_send


PATCHES = (FAST_PATH,)
