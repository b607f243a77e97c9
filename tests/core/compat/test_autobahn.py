"""core/compat/autobahn.py: plain log labels, and frames framed once and written straight.

The canary of `write_frame` on a real daphne socket is in test_daphne.py; here, what it
does with each state of autobahn's protocol, and that autobahn's modules still look their
label functions up where the patch replaces them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
from autobahn.twisted import websocket as autobahn_twisted
from autobahn.websocket import protocol as autobahn_protocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol

from core.compat import autobahn as compat_autobahn
from core.compat import daphne as compat_daphne


def functions_naming(module: Any, name: str) -> list[str]:
    """The functions and methods of a module whose code looks up the global `name`."""
    found = []
    for owner_name, owner in inspect.getmembers(module):
        members = inspect.getmembers(owner, inspect.isfunction) if inspect.isclass(owner) else [(owner_name, owner)]
        for member_name, member in members:
            code = getattr(member, "__code__", None)
            if code is not None and member.__module__ == module.__name__ and name in code.co_names:
                found.append(f"{owner_name}.{member_name}")
    return found


@pytest.mark.parametrize("module", compat_autobahn.LABELLED_MODULES, ids=lambda module: module.__name__)
@pytest.mark.parametrize("name", ["hltype", "hlval"])
def test_autobahns_modules_look_up_the_label_functions_the_patch_replaces(module: Any, name: str) -> None:
    # Canary: the patch swaps the module globals; were autobahn to reach them another way
    # (autobahn.util.hltype), the swap would do nothing and the labels would cost again.
    assert functions_naming(module, name), f"{module.__name__} no longer calls {name} through its globals"


def test_autobahn_log_labels_are_plain_once_installed() -> None:
    assert compat_autobahn.PLAIN_LOG_LABELS.apply()
    label = autobahn_protocol.hltype(test_autobahn_log_labels_are_plain_once_installed)
    assert label == f"<{__name__}.test_autobahn_log_labels_are_plain_once_installed>"
    assert autobahn_protocol.hlval(1234) == 1234  # no click colour codes, built on every frame sent

    assert autobahn_twisted.hltype(plain_label_target) == f"<{__name__}.plain_label_target>"  # each read and close
    assert autobahn_twisted.hlval(5) == 5
    # A value label is rendered only by a log line that is written: a closed
    # connection's Failure was formatted on every close, debug logging off.
    reason = RendersOnDemand()
    assert autobahn_twisted.hlval(reason) is reason and reason.rendered == 0
    assert f"reason={autobahn_twisted.hlval(reason)}" == "reason=plain"


class RendersOnDemand:
    rendered = 0

    def __str__(self) -> str:
        self.rendered += 1
        return "plain"


def plain_label_target() -> None:
    pass


# --- frames framed once ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    # each length form of RFC 6455 on both sides of its bound (in bytes), and multi-byte UTF-8
    ["", "x" * 125, "x" * 126, "x" * 65535, "x" * 65536, "x" * 200_000, "é" * 100],
)
def test_a_prebuilt_frame_is_the_text_frame_a_websocket_client_reads(text: str) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(compat_autobahn.text_frame(text))
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        parsed = done.value
    else:
        raise AssertionError("the frame was incomplete")
    assert parsed.opcode is Opcode.TEXT and parsed.fin and not parsed.rsv1
    assert parsed.data.decode() == text
    assert not reader.buffer  # nothing left over


def test_frame_cache_frames_each_message_once() -> None:
    cache = compat_autobahn.FrameCache()
    first = {"text": '{"a": 1}'}
    frame = cache.frame_of(first)
    assert cache.frame_of(first) is frame  # the same message, socket after socket
    assert cache.frame_of({"text": '{"a": 2}'}) == compat_autobahn.text_frame('{"a": 2}')


class FakeProtocol:
    """The attributes of autobahn's WebSocketProtocol that `write_frame` reads."""

    def __init__(self, **overrides: Any) -> None:
        self.state = compat_autobahn.STATE_OPEN
        self.send_state = compat_autobahn.SEND_STATE_GROUND
        self._perMessageCompress = None
        self.autoFragmentSize = 0
        self.trackedTimings = None
        self.logFrames = False
        self.logOctets = False
        self.written: list[bytes] = []
        self.transport = self
        self.__dict__.update(overrides)

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_write_frame_writes_to_an_open_plain_socket() -> None:
    protocol = FakeProtocol()
    assert compat_autobahn.write_frame(protocol, b"\x81\x00")
    assert protocol.written == [b"\x81\x00"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"state": 4},  # closing: autobahn's path raises or drops as it always did
        {"send_state": 1},  # a fragmented message half sent
        {"_perMessageCompress": object()},
        {"autoFragmentSize": 1024},
        {"trackedTimings": object()},
        {"logFrames": True},
        {"logOctets": True},
    ],
)
def test_write_frame_leaves_anything_special_to_autobahn(overrides: dict[str, Any]) -> None:
    protocol = FakeProtocol(**overrides)
    assert not compat_autobahn.write_frame(protocol, b"\x81\x00")
    assert protocol.written == []


def test_daphne_protocol_is_found_only_behind_daphnes_own_send() -> None:
    protocol = WebSocketProtocol()
    server = Server.__new__(Server)
    assert compat_daphne.daphne_protocol(functools.partial(server.handle_reply, protocol)) is protocol

    async def other_send(message: Any) -> None:
        pass

    assert compat_daphne.daphne_protocol(other_send) is None
    assert compat_daphne.daphne_protocol(functools.partial(server.handle_reply, object())) is None
