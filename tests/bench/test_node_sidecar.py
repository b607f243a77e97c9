"""The Node.js side-car of bench/alternatives/: real Redis, real daphne and Django, real node.

It must behave as daphne's job socket does for what the comparison measures: the owner
gets the snapshot and then a frame published on the job's channel, anyone else 4404.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from bench.alternatives.sidecar import NodeSidecar, SidecarUnavailable, ensure_installed
from bench.stack import Stack, new_session, submit_job
from core.compat import channels_redis as layer_compat
from notifications.groups import job_group

FRAME_TIMEOUT = 10.0  # seconds for a frame to cross Redis and the side-car
SIDECAR_ASGI = "bench.alternatives.sidecar_asgi:application"


@pytest.fixture(scope="module")
def sidecar_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, NodeSidecar]]:
    try:
        ensure_installed()
    except SidecarUnavailable as exc:
        pytest.skip(f"the Node.js side-car cannot run here: {exc}")
    log = Path(tmp_path_factory.mktemp("sidecar")) / "node.log"
    with Stack(daphnes=1, workers=0, asgi=SIDECAR_ASGI) as stack:
        assert stack.redis is not None
        with NodeSidecar(django_url=stack.base_urls[0], redis_url=stack.redis.url, log=log) as sidecar:
            yield stack, sidecar


def _cookie(jar: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in jar.items())


def _open(sidecar: NodeSidecar, origin: str, path: str, cookie: str | None) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return connect(
        f"{sidecar.ws_url}{path}", origin=Origin(origin), additional_headers=headers, open_timeout=FRAME_TIMEOUT
    )


def _frame(socket: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(socket.recv(timeout=FRAME_TIMEOUT))
    return frame


def _close_code(socket: ClientConnection) -> int | None:
    deadline = time.monotonic() + FRAME_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            break
    return None


def _publish(redis_url: str, payload: dict[str, Any]) -> None:
    """A job frame as jobstream's publisher writes it: the layer's encoding, on the layer's channel of the job group."""
    layer = get_channel_layer()
    message = {
        "type": "job.frame",
        "job_id": payload["id"],
        "seq": payload["seq"],
        "terminal": False,
        "text": json.dumps({"type": "job", "job": payload}),
        "published_at": time.time(),
    }
    channel = layer_compat.group_channel_name(layer_compat.layer_prefix(layer), job_group(payload["id"]))
    client = redis.Redis.from_url(redis_url)
    try:
        client.publish(channel, layer.serialize(message))
    finally:
        client.close()


def test_sidecar_delivers_a_published_frame_to_the_owner(sidecar_stack: tuple[Stack, NodeSidecar]) -> None:
    stack, sidecar = sidecar_stack
    base_url = stack.base_urls[0]
    jar, csrf = new_session(base_url)
    job_id = submit_job(base_url, jar, csrf, "sleep", {"steps": 1, "step_seconds": 0})  # queued: no worker
    with _open(sidecar, base_url, f"/ws/jobs/{job_id}/", _cookie(jar)) as socket:
        first = _frame(socket)
        assert first["type"] == "job"
        assert first["job"]["id"] == job_id
        assert first["job"]["state"] == "queued"
        newer = {**first["job"], "seq": first["job"]["seq"] + 1, "state": "running"}
        assert stack.redis is not None
        _publish(stack.redis.url, newer)
        frame = _frame(socket)
    assert frame == {"type": "job", "job": newer}


def test_sidecar_refuses_a_socket_on_a_job_that_is_not_yours(sidecar_stack: tuple[Stack, NodeSidecar]) -> None:
    stack, sidecar = sidecar_stack
    base_url = stack.base_urls[0]
    owner, csrf = new_session(base_url)
    job_id = submit_job(base_url, owner, csrf, "sleep", {"steps": 1, "step_seconds": 0})
    stranger, _ = new_session(base_url)
    with _open(sidecar, base_url, f"/ws/jobs/{job_id}/", _cookie(stranger)) as socket:
        assert _close_code(socket) == 4404


def test_sidecar_closes_4401_without_a_session(sidecar_stack: tuple[Stack, NodeSidecar]) -> None:
    stack, sidecar = sidecar_stack
    base_url = stack.base_urls[0]
    jar, csrf = new_session(base_url)
    job_id = submit_job(base_url, jar, csrf, "sleep", {"steps": 1, "step_seconds": 0})
    with _open(sidecar, base_url, f"/ws/jobs/{job_id}/", None) as socket:
        assert _close_code(socket) == 4401
