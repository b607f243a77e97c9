"""core/compat/channels.py: the consumer fast path, on the real Channels and jobstream's layer."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import redis
from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.sessions import InstanceSessionWrapper, SessionMiddlewareStack
from channels.testing import WebsocketCommunicator

from core.compat import channels as compat_channels
from core.compat.channels_redis import JobStreamChannelLayer
from tests.core.compat.upstream import changed_sources

# The Channels code the fast path repeats or steps around, as it was when it was written.
UPSTREAM = {
    "AsyncConsumer.__call__": (AsyncConsumer.__call__, "e52238720872dbc3"),
    "AsyncConsumer.dispatch": (AsyncConsumer.dispatch, "39f34e7d4fb0f655"),
    "AsyncWebsocketConsumer.websocket_disconnect": (AsyncWebsocketConsumer.websocket_disconnect, "10f38aa55fd51ff5"),
    "InstanceSessionWrapper.__init__": (InstanceSessionWrapper.__init__, "1aed8029d4065532"),
    "InstanceSessionWrapper.send": (InstanceSessionWrapper.send, "e951315e4ef0f195"),
}


class Probe(compat_channels.FastPathConsumer):
    seen: ClassVar[list[Probe]] = []

    async def connect(self) -> None:
        Probe.seen.append(self)
        await self.accept()
        self.send_past_session_middleware()
        await self.send(text_data="accepted")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=f"echo {text_data}")


def test_the_channels_code_the_fast_path_repeats_is_as_it_was_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/channels.py against this Channels"


def test_the_fast_path_is_active_with_the_pinned_version() -> None:
    assert compat_channels.FAST_PATH.apply()


@pytest.mark.django_db
async def test_a_fast_path_socket_has_a_local_channel_and_sends_past_the_session_wrapper(redis_server: Any) -> None:
    Probe.seen.clear()
    communicator = WebsocketCommunicator(SessionMiddlewareStack(Probe.as_asgi()), "/probe/")
    connected, _ = await communicator.connect()
    assert connected
    try:
        assert await communicator.receive_from() == "accepted"
        await communicator.send_to(text_data="hi")
        assert await communicator.receive_from() == "echo hi"  # dispatched by the fast path's dispatch
        (probe,) = Probe.seen
        layer = get_channel_layer()
        assert isinstance(layer, JobStreamChannelLayer)
        assert probe.channel_receive.func == layer.receive_local
        subscribed = redis.Redis.from_url(redis_server.url).pubsub_channels(f"*{probe.channel_name}*")
        assert subscribed == []  # its own channel is no Redis subscription
        assert not isinstance(getattr(probe.base_send, "__self__", None), InstanceSessionWrapper)
    finally:
        await communicator.disconnect()
