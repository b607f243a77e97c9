"""A job's log written by a real worker (jobs/log_writer.py): every line kept, numbered in
order, on the socket before the terminal frame, capped at JOB_LOG_MAX_LINES, and kept
whole while Redis is away."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from core.asgi import application
from core.settings import channel_layers_for
from jobs import kinds
from jobs.kinds import JobKind, Param, Reporter, register
from jobs.logs import FRAME_MAX_BYTES
from jobs.models import TERMINAL_STATES, Job, JobLogLine, JobState
from jobs.owners import Owner
from jobs.services import job_create
from tests.notifications.test_consumers import FRAME_TIMEOUT, headers, new_owner, session_for
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

KIND = "chatty_test"
JOB_TIMEOUT = 30.0  # seconds for a job of a few thousand lines to end on this machine
LINES = 3000


WATCHER_READY = threading.Event()  # set by a test once its socket is open (the worker runs in this process)


def run_chatty(report: Reporter, *, lines: int, wait: float = 0.0) -> dict[str, Any]:
    if wait:
        assert WATCHER_READY.wait(wait), "the watcher never opened its socket"
    for index in range(1, lines + 1):
        report.log(f"line {index}", level="warning" if index % 100 == 0 else "info")
        report(current=index, total=lines, message=f"{index} lines")
    return {"lines": lines}


@pytest.fixture
def chatty_kind() -> Iterator[None]:
    register(
        JobKind(
            name=KIND,
            title="Chatty",
            description="Writes log lines as fast as it can.",
            run=run_chatty,
            params=(Param("lines", "Lines", 1, 100_000), Param("wait", "Wait", 0, 5, default=0, integer=False)),
        )
    )
    yield
    kinds._REGISTRY.pop(KIND)


def ended(job_id: Any) -> Job:
    assert wait_until(
        lambda: Job.objects.get(pk=job_id).state in TERMINAL_STATES, timeout=JOB_TIMEOUT, interval=0.05
    ), "the job never ended"
    return Job.objects.get(pk=job_id)


def kept(job_id: Any) -> list[tuple[int, str]]:
    return list(JobLogLine.objects.filter(job_id=job_id).order_by("n").values_list("n", "text"))


def test_every_line_a_kind_writes_is_kept_in_order(chatty_kind: None, worker: Any) -> None:
    job = job_create(owner=new_owner(), kind=KIND, params={"lines": LINES})
    done = ended(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert kept(job.id) == [(n, f"line {n}") for n in range(1, LINES + 1)]
    assert (done.log_total, done.log_dropped) == (LINES, 0)
    assert done.log_bytes == sum(len(f"line {n}") for n in range(1, LINES + 1))


def test_a_log_past_job_log_max_lines_keeps_its_end(chatty_kind: None, worker: Any, settings: Any) -> None:
    settings.JOB_LOG_MAX_LINES = 500
    job = job_create(owner=new_owner(), kind=KIND, params={"lines": LINES})
    done = ended(job.id)
    assert kept(job.id) == [(n, f"line {n}") for n in range(LINES - 499, LINES + 1)]
    assert (done.log_total, done.log_dropped) == (LINES, LINES - 500)


def test_a_failed_job_ends_its_log_with_its_error(worker: Any) -> None:
    job = job_create(owner=new_owner(), kind="sleep", params={"steps": 3, "step_seconds": 0.01, "fail_at_step": 2})
    done = ended(job.id)
    assert done.state == JobState.FAILED
    last = JobLogLine.objects.filter(job_id=job.id).order_by("n").last()
    assert last is not None and (last.level, last.text) == ("error", done.error)


async def test_a_watcher_gets_every_line_once_and_all_before_the_terminal_frame(chatty_kind: None, worker: Any) -> None:
    owner: Owner = new_owner()
    key = await session_for(owner)
    job = await database_sync_to_async(job_create)(owner=owner, kind=KIND, params={"lines": LINES, "wait": 5})
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/", headers=headers(key))
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    first = json.loads(await communicator.receive_from(timeout=FRAME_TIMEOUT))
    assert first["type"] == "job"
    WATCHER_READY.set()
    numbers: list[int] = []
    terminal_seen_after: int | None = None
    frames_per_second: dict[int, int] = {}
    while True:
        output = await communicator.receive_output(timeout=JOB_TIMEOUT)
        if output["type"] == "websocket.close":
            assert output.get("code", 1000) == 1000
            break
        frame = json.loads(output["text"])
        assert len(output["text"].encode()) <= FRAME_MAX_BYTES
        if frame["type"] == "log":
            numbers += [line["n"] for line in frame["lines"]]
            second = int(time.monotonic())
            frames_per_second[second] = frames_per_second.get(second, 0) + 1
        elif frame["job"]["state"] in ("succeeded", "failed", "cancelled"):
            assert frame["job"]["state"] == "succeeded"
            terminal_seen_after = len(numbers)
    assert numbers == list(range(1, LINES + 1))
    assert terminal_seen_after == LINES  # every line came before the terminal frame
    # At most PROGRESS_MAX_RATE log frames a second (a clock second may hold the ends of two intervals).
    assert max(frames_per_second.values()) <= settings.PROGRESS_MAX_RATE + 2, frames_per_second


def test_a_log_written_while_redis_is_away_is_kept_whole(chatty_kind: None, worker: Any, settings: Any) -> None:
    # The channel layer points at a port nobody listens on: every publish fails (and is
    # logged), the job goes on, and the database keeps every line.
    settings.CHANNEL_LAYERS = channel_layers_for("redis://127.0.0.1:1/0")
    job = job_create(owner=new_owner(), kind=KIND, params={"lines": 300})
    done = ended(job.id)
    assert done.state == JobState.SUCCEEDED, done.error
    assert kept(job.id) == [(n, f"line {n}") for n in range(1, 301)]
