"""The one declaration of the job JSON (jobs/serializers.py): its keys, its states, the
running frames built from it, and every surface that sends a job (the API body, the
socket frame, the SSE data) sending exactly it."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import AsyncClient, Client
from django.utils import timezone

from core.asgi import application
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from jobs.serializers import (
    JOB_KEYS,
    JobPayload,
    JobStateName,
    RunningFrames,
    error_frame_text,
    job_frame_text,
    job_payload,
    snapshot_frame_text,
)
from tests.accounts import VIEW_ALL_JOBS, user_with

RECEIVE_TIMEOUT = 5.0  # seconds for the in-process app to answer
ORIGIN = b"http://127.0.0.1"


def unsaved_job(*, seq: int = 3, **fields: Any) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=uuid.uuid4(),
        owner_token="p" * 32,
        kind="sleep",
        params={"steps": 1, "step_seconds": 0},
        state=JobState.RUNNING,
        seq=seq,
        created_at=now,
        started_at=now,
        updated_at=now,
        **fields,
    )


# --- the declaration -------------------------------------------------------------


def test_job_keys_are_the_declared_keys_but_error_detail() -> None:
    assert set(JobPayload.__annotations__) - JOB_KEYS == {"error_detail"}
    assert JobPayload.__optional_keys__ == {"error_detail"}


def test_job_payload_has_exactly_the_job_keys_and_error_detail_only_for_staff() -> None:
    job = unsaved_job(error="It broke.", error_detail="Traceback: boom")
    assert set(job_payload(job)) == JOB_KEYS
    staff = job_payload(job, staff=True)
    assert set(staff) == JOB_KEYS | {"error_detail"}
    assert staff["error_detail"] == "Traceback: boom"


def test_the_json_state_names_are_the_models_states() -> None:
    assert set(get_args(JobStateName)) == set(JobState.values)


def test_frame_texts_are_compact_json_of_the_declared_frames() -> None:
    payload = job_payload(unsaved_job())
    assert json.loads(job_frame_text(payload)) == {"type": "job", "job": payload}
    assert json.loads(snapshot_frame_text([payload])) == {"type": "snapshot", "jobs": [payload]}
    assert json.loads(snapshot_frame_text([], counts={"queued": 2})) == {
        "type": "snapshot",
        "jobs": [],
        "counts": {"queued": 2},
    }
    assert error_frame_text('say "why"') == '{"type":"error","error":"say \\"why\\""}'
    assert ", " not in job_frame_text(payload) and ": " not in job_frame_text(payload)


def test_a_nan_in_a_result_is_refused_rather_than_sent_as_invalid_json() -> None:
    with pytest.raises(ValueError):
        job_frame_text(job_payload(unsaved_job(result={"x": float("nan")})))


@pytest.mark.parametrize(
    ("current", "total", "rate", "eta"),
    [(2.5, 10, 0.8333, 9.04), (340, 1000, 120.5, 5.5), (3, None, None, None), (0, 0, 0.0, 0.0)],
)
def test_a_running_jobs_frame_text_is_the_frame_job_payload_gives(
    current: float, total: float | None, rate: float | None, eta: float | None
) -> None:
    job = unsaved_job(seq=3)
    frames = RunningFrames(job)  # built once when the run starts
    job.seq = 4
    job.has_progress = True
    job.progress_current, job.progress_total, job.progress_message = current, total, 'step "two" <b>'
    job.progress_rate, job.progress_eta_seconds = rate, eta
    job.updated_at = datetime.now(UTC)

    assert frames.text(job) == job_frame_text(job_payload(job))


# --- every surface sends exactly it ----------------------------------------------


@database_sync_to_async
def viewer_session(*, staff: bool) -> tuple[str, str]:
    """A session key, and the token of the jobs it owns: an anonymous visitor, or staff
    (a user with jobs.view_all_jobs)."""
    if staff:
        client = Client()
        user = user_with(f"staff-{secrets.token_hex(4)}", VIEW_ALL_JOBS)
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value, secrets.token_hex(16)
    token = secrets.token_hex(16)
    session = SessionStore()
    session[SESSION_OWNER_KEY] = token
    session.save()
    assert session.session_key is not None
    return session.session_key, token


@database_sync_to_async
def failed_job_with_progress(owner_token: str) -> Job:
    """A terminal job (no worker may pick it up) with every key filled: progress with
    whole and fractional numbers, an error and its traceback."""
    now = timezone.now()
    return Job.objects.create(
        owner_token=owner_token,
        kind="sleep",
        params={"steps": 1000, "step_seconds": 0.5},
        state=JobState.FAILED,
        seq=17,
        has_progress=True,
        progress_current=340,
        progress_total=1000,
        progress_message="checked 340,000 numbers",
        progress_rate=120.5,
        progress_eta_seconds=5.5,
        error="It broke.",
        error_detail="Traceback: boom",
        created_at=now,
        started_at=now,
        finished_at=now,
        updated_at=now,
    )


def cookie(session_key: str) -> tuple[bytes, bytes]:
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())


async def api_body(session_key: str, job_id: uuid.UUID) -> dict[str, Any]:
    client = AsyncClient()
    client.cookies[settings.SESSION_COOKIE_NAME] = session_key
    response = await client.get(f"/api/jobs/{job_id}/")
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


async def socket_frame(session_key: str, job_id: uuid.UUID) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"origin", ORIGIN), cookie(session_key)]
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=headers)
    connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert connected
    try:
        frame = json.loads(await communicator.receive_from(timeout=RECEIVE_TIMEOUT))
    finally:
        await communicator.disconnect()
    assert frame["type"] == "job"
    job: dict[str, Any] = frame["job"]
    return job


async def sse_data(session_key: str, job_id: uuid.UUID) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), cookie(session_key)]
    communicator = HttpCommunicator(application, "GET", f"/api/jobs/{job_id}/events/", headers=headers)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=RECEIVE_TIMEOUT)
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    body = b""
    while True:  # a terminal job: one event, then the end of the stream
        chunk = await communicator.receive_output(timeout=RECEIVE_TIMEOUT)
        body += chunk.get("body", b"")
        if not chunk.get("more_body"):
            break
    # The job's event (its log's follows: docs/contract.md#job-logs).
    (event,) = [event for event in body.decode().split("\n\n") if "event: job\n" in event]
    (data,) = [line for line in event.splitlines() if line.startswith("data: ")]
    job: dict[str, Any] = json.loads(data.removeprefix("data: "))
    return job


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("staff", [False, True], ids=["owner", "staff"])
async def test_the_api_body_the_socket_frame_and_the_sse_data_are_one_job_json(staff: bool, redis_server: Any) -> None:
    session_key, owner_token = await viewer_session(staff=staff)
    job = await failed_job_with_progress(owner_token)

    body = await api_body(session_key, job.id)
    frame = await socket_frame(session_key, job.id)
    data = await sse_data(session_key, job.id)

    assert set(body) == set(frame) == set(data) == (JOB_KEYS | {"error_detail"} if staff else JOB_KEYS)
    assert body == frame == data
    assert body["progress"]["current"] == 340 and isinstance(body["progress"]["current"], int)  # not 340.0
    if staff:
        assert body["error_detail"] == "Traceback: boom"
