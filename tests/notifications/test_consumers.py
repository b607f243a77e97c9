"""The WebSocket consumers, driven through the real ASGI app (origin check, sessions)
over the real Redis pub/sub channel layer.

Jobs are written as rows here, not through `job_create`, unless a test is about
creation: the session's Celery worker thread may be running, and a dispatched job
would not stay queued.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client

from core.asgi import application
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY, Owner
from jobs.progress import ProgressUpdate
from jobs.serializers import JOB_KEYS
from jobs.services import job_create, job_finish, job_report_progress, job_start
from notifications.consumers import CLOSE_FLOOD, CLOSE_NO_SESSION, CLOSE_NORMAL, CLOSE_NOT_FOUND, CLOSE_TOO_BIG
from notifications.groups import job_group
from notifications.socket_quota import address_slots_key, socket_slots_key
from tests.accounts import BYPASS_QUOTAS, VIEW_ALL_JOBS, user_with

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 5.0  # seconds for one frame to cross the layer on this machine
ORIGIN = b"http://127.0.0.1"


# --- helpers ---------------------------------------------------------------------


def new_owner() -> Owner:
    return Owner(token=secrets.token_hex(16))


@database_sync_to_async
def session_for(owner: Owner) -> str:
    session = SessionStore()
    session[SESSION_OWNER_KEY] = owner.token
    session.save()
    assert session.session_key is not None
    return session.session_key


_clock = [datetime(2030, 1, 1, tzinfo=UTC)]


@database_sync_to_async
def make_job(owner: Owner, *, state: JobState = JobState.QUEUED, seq: int = 1) -> Job:
    """A job row with no task behind it; each one is newer than the one before."""
    _clock[0] += timedelta(seconds=1)
    return Job.objects.create(
        owner_token=owner.token or "",
        kind="sleep",
        params={"steps": 3, "step_seconds": 0.01},
        state=state,
        seq=seq,
        created_at=_clock[0],
        updated_at=_clock[0],
    )


def progress(current: float, total: float = 10) -> ProgressUpdate:
    return ProgressUpdate(current=current, total=total, message=f"step {current}", rate=None, eta_seconds=None, at=0.0)


def headers(session_key: str | None = None, origin: bytes | None = ORIGIN) -> list[tuple[bytes, bytes]]:
    result = [(b"host", b"127.0.0.1")]
    if origin is not None:
        result.append((b"origin", origin))
    if session_key is not None:
        result.append((b"cookie", f"sessionid={session_key}".encode()))
    return result


async def connect(path: str, session_key: str | None, origin: bytes | None = ORIGIN) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers(session_key, origin))
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected, f"handshake to {path} refused"
    return communicator


async def receive(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """The next text frame as JSON, past the job's log frames (tests/notifications/test_log_streams.py
    covers those); fails on a close."""
    while True:
        output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
        assert output["type"] == "websocket.send", f"expected a frame, got {output}"
        frame: dict[str, Any] = json.loads(output["text"])
        if frame["type"] != "log":
            return frame


async def close_code(communicator: WebsocketCommunicator) -> int:
    """Skips frames up to the server's close; returns its code."""
    while True:
        output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
        if output["type"] == "websocket.close":
            return int(output.get("code", 1000))


@pytest.fixture
async def owner_session() -> AsyncIterator[tuple[Owner, str]]:
    owner = new_owner()
    yield owner, await session_for(owner)


# --- single-job socket: what it sends ---------------------------------------------


async def test_job_socket_first_frame_is_the_full_job(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)

    frame = await receive(communicator)

    assert frame["type"] == "job"
    assert set(frame["job"]) == JOB_KEYS
    assert frame["job"]["id"] == str(job.id)
    assert frame["job"]["state"] == "queued"
    assert frame["job"]["seq"] == 1
    assert frame["job"]["queue_position"] is not None
    await communicator.disconnect()


async def test_job_socket_streams_service_changes_in_seq_order_and_closes_1000_after_terminal(
    owner_session: tuple[Owner, str],
) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    first = await receive(communicator)

    await database_sync_to_async(job_start)(job_id=job.id, task_id="t")
    for step in (1, 2, 3):
        await database_sync_to_async(job_report_progress)(job_id=job.id, update=progress(step))
    await database_sync_to_async(job_finish)(job_id=job.id, state=JobState.SUCCEEDED, result={"ok": True})

    frames = [await receive(communicator) for _ in range(5)]
    seqs = [first["job"]["seq"]] + [frame["job"]["seq"] for frame in frames]
    assert seqs == sorted(set(seqs)), f"seq not strictly increasing: {seqs}"
    assert [frame["job"]["state"] for frame in frames] == ["running"] * 4 + ["succeeded"]
    assert [frame["job"]["progress"]["current"] for frame in frames[1:4]] == [1, 2, 3]
    assert frames[-1]["job"]["result"] == {"ok": True}
    assert await close_code(communicator) == CLOSE_NORMAL


async def test_job_socket_on_terminal_job_sends_snapshot_then_closes_1000(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner, state=JobState.SUCCEEDED, seq=5)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)

    frame = await receive(communicator)

    assert frame["job"]["state"] == "succeeded"
    assert frame["job"]["seq"] == 5
    assert await close_code(communicator) == CLOSE_NORMAL


async def test_job_socket_drops_layer_frame_with_stale_seq(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner, state=JobState.RUNNING, seq=10)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)
    layer = get_channel_layer()
    assert layer is not None

    def message(seq: int, text: str) -> dict[str, Any]:
        return {"type": "job.frame", "job_id": str(job.id), "seq": seq, "terminal": False, "text": text}

    stale = json.dumps({"type": "job", "job": {"seq": 9, "marker": "stale"}})
    fresh = json.dumps({"type": "job", "job": {"seq": 11, "marker": "fresh"}})
    await layer.group_send(job_group(job.id), message(9, stale))
    await layer.group_send(job_group(job.id), message(10, stale))
    await layer.group_send(job_group(job.id), message(11, fresh))

    # The layer delivers in order: the first frame through must be the fresh one.
    assert (await receive(communicator))["job"]["marker"] == "fresh"
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


# --- single-job socket: who may watch ----------------------------------------------


async def test_job_socket_for_another_owners_job_accepts_then_closes_4404(owner_session: tuple[Owner, str]) -> None:
    _, key = owner_session
    job = await make_job(new_owner())
    communicator = await connect(f"/ws/jobs/{job.id}/", key)

    output = await communicator.receive_output(timeout=FRAME_TIMEOUT)

    assert output == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}


async def test_job_socket_with_malformed_id_closes_4404(owner_session: tuple[Owner, str]) -> None:
    _, key = owner_session
    communicator = await connect("/ws/jobs/not-a-uuid/", key)

    assert await communicator.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4404}


async def test_job_socket_with_unknown_id_closes_4404(owner_session: tuple[Owner, str]) -> None:
    _, key = owner_session
    communicator = await connect(f"/ws/jobs/{uuid.uuid4()}/", key)

    assert await communicator.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4404}


@pytest.mark.parametrize("path", ["/ws/jobs/{job}/", "/ws/jobs/", "/ws/staff/jobs/", "/ws/jobs/not-a-uuid/", "/ws/x/"])
async def test_a_socket_without_a_session_cookie_closes_4401_before_any_4404(path: str) -> None:
    job = await make_job(new_owner())
    communicator = await connect(path.replace("{job}", str(job.id)), None)

    assert await communicator.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4401}
    assert CLOSE_NO_SESSION == 4401


@pytest.mark.parametrize("path", ["/ws/jobs/{job}/", "/ws/jobs/", "/ws/staff/jobs/", "/ws/jobs/not-a-uuid/"])
async def test_a_socket_whose_session_cookie_names_no_session_closes_4401(path: str) -> None:
    job = await make_job(new_owner())
    communicator = await connect(path.replace("{job}", str(job.id)), "no-such-session-key-0123456789abcdef")

    assert await communicator.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4401}


async def test_handshake_without_origin_is_refused(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=headers(key, origin=None))

    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)

    assert connected is False


async def test_handshake_from_foreign_origin_is_refused(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = WebsocketCommunicator(
        application, f"/ws/jobs/{job.id}/", headers=headers(key, origin=b"http://evil.example")
    )

    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)

    assert connected is False


# --- owner socket ------------------------------------------------------------------


async def test_owner_socket_snapshot_holds_only_my_jobs_newest_first(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    mine = [await make_job(owner, state=state) for state in (JobState.SUCCEEDED, JobState.QUEUED, JobState.RUNNING)]
    await make_job(new_owner())
    communicator = await connect("/ws/jobs/", key)

    frame = await receive(communicator)

    assert frame["type"] == "snapshot"
    assert [job["id"] for job in frame["jobs"]] == [str(job.id) for job in reversed(mine)]
    assert all(set(job) == JOB_KEYS for job in frame["jobs"])
    await communicator.disconnect()


async def test_owner_stream_receives_job_created_after_connect(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    communicator = await connect("/ws/jobs/", key)
    assert (await receive(communicator))["jobs"] == []

    job = await database_sync_to_async(job_create)(owner=owner, kind="sleep", params={"steps": 1, "step_seconds": 0})

    frame = await receive(communicator)
    assert frame["type"] == "job"
    assert frame["job"]["id"] == str(job.id)
    assert frame["job"]["seq"] >= 1
    await communicator.disconnect()


async def test_owner_stream_does_not_receive_another_owners_job(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    communicator = await connect("/ws/jobs/", key)
    await receive(communicator)
    other = await make_job(new_owner(), state=JobState.RUNNING)
    mine = await make_job(owner, state=JobState.RUNNING)

    await database_sync_to_async(job_report_progress)(job_id=other.id, update=progress(1))
    await database_sync_to_async(job_report_progress)(job_id=mine.id, update=progress(1))

    assert (await receive(communicator))["job"]["id"] == str(mine.id)
    await communicator.disconnect()


# --- client frames -----------------------------------------------------------------


async def test_malformed_json_gets_error_frame_and_socket_stays_open(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner, state=JobState.RUNNING)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    await communicator.send_to(text_data="{not json")
    error = await receive(communicator)
    await database_sync_to_async(job_report_progress)(job_id=job.id, update=progress(4))

    assert error["type"] == "error"
    assert "JSON" in error["error"]
    later = await receive(communicator)
    assert later["type"] == "job"
    assert later["job"]["progress"]["current"] == 4
    await communicator.disconnect()


async def test_unknown_frame_type_gets_error_frame(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    await communicator.send_json_to({"type": "subscribe"})

    frame = await receive(communicator)
    assert frame["type"] == "error"
    assert "subscribe" in frame["error"]
    await communicator.disconnect()


async def test_binary_frame_gets_error_frame(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    await communicator.send_to(bytes_data=b"\x00\x01")

    frame = await receive(communicator)
    assert frame["type"] == "error"
    assert "Binary" in frame["error"]
    await communicator.disconnect()


async def test_frame_over_4_kib_closes_1009(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    await communicator.send_to(text_data=json.dumps({"type": "cancel", "pad": "x" * 4096}))

    assert await close_code(communicator) == 1009
    assert CLOSE_TOO_BIG == 1009


async def test_frame_of_exactly_4_kib_is_not_closed(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    await communicator.send_to(text_data="x" * 4096)

    assert (await receive(communicator))["type"] == "error"
    await communicator.disconnect()


async def test_flood_of_client_frames_closes_4429(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    for _ in range(100):
        await communicator.send_to(text_data='{"type": "ping"}')

    assert await close_code(communicator) == CLOSE_FLOOD == 4429


async def test_cancel_frame_on_queued_job_is_followed_by_cancelled_frame(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    first = await receive(communicator)

    await communicator.send_json_to({"type": "cancel"})

    frame = await receive(communicator)
    assert frame["type"] == "job"
    assert frame["job"]["state"] == "cancelled"
    assert frame["job"]["seq"] > first["job"]["seq"]
    assert await close_code(communicator) == CLOSE_NORMAL


async def test_owner_socket_cancel_with_id_cancels_that_job(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner)
    communicator = await connect("/ws/jobs/", key)
    await receive(communicator)

    await communicator.send_json_to({"type": "cancel", "id": str(job.id)})

    frame = await receive(communicator)
    assert frame["job"]["id"] == str(job.id)
    assert frame["job"]["state"] == "cancelled"
    await communicator.disconnect()


async def test_owner_socket_cancel_of_finished_job_gets_error_frame(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner, state=JobState.SUCCEEDED, seq=4)
    communicator = await connect("/ws/jobs/", key)
    await receive(communicator)

    await communicator.send_json_to({"type": "cancel", "id": str(job.id)})

    frame = await receive(communicator)
    assert frame["type"] == "error"
    assert "succeeded" in frame["error"]
    await communicator.disconnect()


async def test_owner_socket_cancel_of_another_owners_job_gets_error_frame(owner_session: tuple[Owner, str]) -> None:
    _, key = owner_session
    job = await make_job(new_owner())
    communicator = await connect("/ws/jobs/", key)
    await receive(communicator)

    await communicator.send_json_to({"type": "cancel", "id": str(job.id)})

    assert (await receive(communicator))["type"] == "error"
    assert (await database_sync_to_async(Job.objects.get)(pk=job.id)).state == JobState.QUEUED
    await communicator.disconnect()


async def test_owner_socket_cancel_without_id_gets_error_frame(owner_session: tuple[Owner, str]) -> None:
    _, key = owner_session
    communicator = await connect("/ws/jobs/", key)
    await receive(communicator)

    await communicator.send_json_to({"type": "cancel"})

    frame = await receive(communicator)
    assert frame["type"] == "error"
    assert "id" in frame["error"]
    await communicator.disconnect()


# --- idle sockets ------------------------------------------------------------------


async def test_socket_idle_for_12_seconds_still_receives_the_next_frame(owner_session: tuple[Owner, str]) -> None:
    owner, key = owner_session
    job = await make_job(owner, state=JobState.RUNNING)
    communicator = await connect(f"/ws/jobs/{job.id}/", key)
    await receive(communicator)

    # The idleness itself is under test: a pub/sub connection quiet for longer than a
    # socket timeout (redis-py's, or the server's) must still deliver the next frame.
    await asyncio.sleep(12)
    await database_sync_to_async(job_report_progress)(job_id=job.id, update=progress(5))

    frame = await receive(communicator)
    assert frame["job"]["progress"]["current"] == 5
    await communicator.disconnect()


# --- rights: jobs.view_all_jobs, never the is_staff flag --------------------------


@database_sync_to_async
def user_session(username: str, *codenames: str, is_staff: bool = True) -> str:
    """The session key of a signed-in staff-flagged user holding the permissions `codenames`."""
    client = Client()
    client.force_login(user_with(username, *codenames, is_staff=is_staff))
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


async def test_a_staff_flag_alone_gets_4404_on_another_owners_job_socket() -> None:
    job = await make_job(new_owner(), state=JobState.FAILED, seq=3)
    communicator = await connect(f"/ws/jobs/{job.id}/", await user_session("clerk"))
    assert await close_code(communicator) == CLOSE_NOT_FOUND


async def test_view_all_jobs_follows_another_owners_job_and_reads_its_traceback() -> None:
    job = await make_job(new_owner())
    communicator = await connect(f"/ws/jobs/{job.id}/", await user_session("root", VIEW_ALL_JOBS))
    assert (await receive(communicator))["job"]["error_detail"] is None

    await database_sync_to_async(job_start)(job_id=job.id, task_id="t")
    await database_sync_to_async(job_finish)(
        job_id=job.id, state=JobState.FAILED, error="It broke.", error_detail="Traceback: boom"
    )

    frames = [await receive(communicator) for _ in range(2)]
    assert [frame["job"]["state"] for frame in frames] == ["running", "failed"]
    assert await close_code(communicator) == CLOSE_NORMAL
    # A stream's first state is read for the viewer: it carries the traceback.
    again = await connect(f"/ws/jobs/{job.id}/", await user_session("auditor", VIEW_ALL_JOBS))
    assert (await receive(again))["job"]["error_detail"] == "Traceback: boom"
    assert await close_code(again) == CLOSE_NORMAL


async def test_the_staff_socket_is_4404_for_a_staff_flag_alone() -> None:
    communicator = await connect("/ws/staff/jobs/", await user_session("clerk", BYPASS_QUOTAS))
    assert await close_code(communicator) == CLOSE_NOT_FOUND


async def test_the_staff_socket_streams_every_owners_jobs_with_view_all_jobs() -> None:
    job = await make_job(new_owner())
    communicator = await connect("/ws/staff/jobs/", await user_session("root", VIEW_ALL_JOBS, is_staff=False))
    snapshot = await receive(communicator)
    assert snapshot["type"] == "snapshot"
    assert [shown["id"] for shown in snapshot["jobs"]] == [str(job.id)]

    await database_sync_to_async(job_start)(job_id=job.id, task_id="t")

    frame = await receive(communicator)
    assert (frame["type"], frame["job"]["id"], frame["job"]["state"]) == ("job", str(job.id), "running")
    await communicator.disconnect()


# --- however a socket ends ---------------------------------------------------------


class ClientGone(Exception):
    """What daphne's send raises once the client has gone (autobahn's `Disconnected`)."""


@pytest.mark.parametrize("path_of", [lambda job: f"/ws/jobs/{job.id}/", lambda job: "/ws/jobs/"])
async def test_a_socket_whose_first_send_fails_gives_its_slots_back_and_leaves_its_groups(
    owner_session: tuple[Owner, str], redis_client: Any, path_of: Any
) -> None:
    # A client gone between the accept and the first frame: the send raises inside
    # `connect`, and Channels then never calls `disconnect`. Such sockets once kept
    # their quota slots (refreshed every 20 s for the life of the process: a few of
    # them locked an owner out) and their group memberships.
    owner, key = owner_session
    job = await make_job(owner)

    async def client_gone_at_first_frame(scope: Any, receive: Any, send: Any) -> None:
        async def send_until_gone(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                raise ClientGone()
            await send(message)

        await application(scope, receive, send_until_gone)

    communicator = WebsocketCommunicator(client_gone_at_first_frame, path_of(job), headers=headers(key))
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    with pytest.raises(ClientGone):
        await communicator.wait(timeout=FRAME_TIMEOUT)
    assert redis_client.zcard(socket_slots_key(owner.key)) == 0
    assert redis_client.zcard(address_slots_key("127.0.0.1")) == 0
    subscribed = [channel.decode() for channel in redis_client.pubsub_channels("asgi__group__*")]
    assert not [channel for channel in subscribed if job_group(job.id) in channel or owner.key in channel]
