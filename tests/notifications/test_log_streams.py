"""A job's log on its socket and its event stream (docs/contract.md#job-logs): the backfill
after the first job frame, `log_after`, live batches cut to what a stream has not shown,
every line before the terminal frame.

Lines are written the way a worker writes them (jobs/log_writer.py: kept in the database,
then published through the session's Redis), to a job row set running by hand.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from core.asgi import application
from jobs import log_writer
from jobs.log_writer import JobLogWriter
from jobs.logs import BACKFILL_MAX_LINES, FRAME_MAX_BYTES
from jobs.models import Job, JobLogLine, JobState
from jobs.owners import Owner
from jobs.services import job_finish
from tests.notifications.test_consumers import FRAME_TIMEOUT, close_code, headers, make_job, new_owner, session_for

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def _mark_running(job: Job) -> Job:
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, attempts=1)
    job.refresh_from_db()
    return job


async def running(owner: Owner) -> tuple[Job, JobLogWriter]:
    job = await _mark_running(await make_job(owner))
    return job, JobLogWriter(job_id=job.id, attempt=1)


async def write(writer: JobLogWriter, *texts: str, level: str = "info") -> None:
    """Lines as a kind writes them, kept and published as the worker's flusher does."""
    for text in texts:
        writer.log(text, level)
    while writer.pending:  # a frame's worth at a time, as the flusher takes them
        await database_sync_to_async(writer.flush)()


async def frames_until(communicator: WebsocketCommunicator, predicate: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the first one `predicate` accepts."""
    frames: list[dict[str, Any]] = []
    while True:
        output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
        assert output["type"] == "websocket.send", f"closed early ({output}) after {frames}"
        frames.append(json.loads(output["text"]))
        if predicate(frames[-1]):
            return frames


async def open_job_socket(job: Job, key: str, query: str = "") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.id}/{query}", headers=headers(key))
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    return communicator


def ended(frame: dict[str, Any]) -> bool:
    return frame["type"] == "job" and frame["job"]["state"] not in ("queued", "running")


def numbers(frames: list[dict[str, Any]]) -> list[int]:
    return [line["n"] for frame in frames if frame["type"] == "log" for line in frame["lines"]]


# --- the backfill --------------------------------------------------------------------


async def test_the_backfill_follows_the_first_job_frame_with_the_lines_above_log_after() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, *(f"line {index}" for index in range(1, 8)))
    communicator = await open_job_socket(job, await session_for(owner), "?log_after=3")
    first, backfill = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert first["type"] == "job"
    assert [line["text"] for line in backfill["lines"]] == ["line 4", "line 5", "line 6", "line 7"]
    assert (backfill["total"], backfill["dropped"]) == (7, 0)
    assert set(backfill["lines"][0]) == {"n", "t", "level", "text"}
    await communicator.disconnect()


async def test_a_socket_on_a_job_without_lines_gets_one_empty_backfill_frame() -> None:
    owner = new_owner()
    job, _ = await running(owner)
    communicator = await open_job_socket(job, await session_for(owner))
    frames = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert [frame["type"] for frame in frames] == ["job", "log"]
    assert frames[1] == {"type": "log", "lines": [], "total": 0, "dropped": 0}
    await communicator.disconnect()


async def test_a_long_backfill_is_the_last_500_lines_in_frames_of_at_most_64_kib() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, *(f"{index:04d} " + "x" * 995 for index in range(1, 701)))
    communicator = await open_job_socket(job, await session_for(owner))
    frames: list[dict[str, Any]] = []
    while len(numbers(frames)) < BACKFILL_MAX_LINES:
        output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
        assert len(output["text"].encode()) <= FRAME_MAX_BYTES
        frames.append(json.loads(output["text"]))
    assert numbers(frames) == list(range(201, 701))
    assert len([frame for frame in frames if frame["type"] == "log"]) > 1
    await communicator.disconnect()


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5", "9" * 20, ""])
async def test_a_bad_log_after_gets_an_error_frame_naming_it_and_the_whole_log(raw: str) -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, "one", "two")
    communicator = await open_job_socket(job, await session_for(owner), f"?log_after={raw}")
    frames = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert [frame["type"] for frame in frames] == ["job", "error", "log"]
    assert "log_after" in frames[1]["error"]
    assert numbers(frames) == [1, 2]
    await communicator.disconnect()


# --- live lines ------------------------------------------------------------------------


async def test_live_lines_follow_in_order_each_once_and_all_before_the_terminal_frame() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, "before")
    communicator = await open_job_socket(job, await session_for(owner))
    await frames_until(communicator, lambda frame: frame["type"] == "log")
    for batch in range(5):
        await write(writer, *(f"batch {batch} line {index}" for index in range(3)), level="warning")
    await database_sync_to_async(job_finish)(job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    frames = await frames_until(
        communicator, lambda frame: frame["type"] == "job" and frame["job"]["state"] != "running"
    )
    assert numbers(frames) == list(range(2, 17))
    assert frames[-1]["job"]["state"] == "succeeded"
    assert {line["level"] for frame in frames if frame["type"] == "log" for line in frame["lines"]} == {"warning"}
    assert await close_code(communicator) == 1000


async def test_a_live_batch_the_backfill_already_showed_in_part_comes_cut_to_the_new_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = new_owner()
    job, writer = await running(owner)
    key = await session_for(owner)
    await write(writer, "one", "two")
    # Lines kept in the database and not yet published when the socket reads its backfill:
    # the backfill shows them, and their batch, published after, must not show them again.
    writer.log("three")
    writer.log("four")
    published: list[Any] = []
    original = log_writer.publish_log
    monkeypatch.setattr(log_writer, "publish_log", lambda *args, **kwargs: published.append((args, kwargs)))
    await database_sync_to_async(writer.flush)()
    monkeypatch.setattr(log_writer, "publish_log", original)
    communicator = await open_job_socket(job, key, "?log_after=1")
    backfill = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert numbers(backfill) == [2, 3, 4]
    ((args, kwargs),) = published
    await database_sync_to_async(original)(*args, **kwargs)  # the batch of 3 and 4, late
    await write(writer, "five")
    live = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert numbers(live) == [5]
    await communicator.disconnect()


async def test_the_owner_socket_carries_no_log_lines() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers(await session_for(owner)))
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected
    await frames_until(communicator, lambda frame: frame["type"] == "snapshot")
    await write(writer, "not for the owner stream")
    await database_sync_to_async(job_finish)(job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    frames = await frames_until(
        communicator, lambda frame: frame["type"] == "job" and frame["job"]["state"] == "succeeded"
    )
    assert [frame["type"] for frame in frames] == ["job"]
    await communicator.disconnect()


async def test_a_socket_opened_after_the_end_sends_the_terminal_frame_then_the_backfill_then_closes() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, "one", "two", "three")
    await database_sync_to_async(job_finish)(job_id=job.id, state=JobState.FAILED, attempt=1, error="it broke")
    communicator = await open_job_socket(job, await session_for(owner), "?log_after=1")
    frames = await frames_until(communicator, lambda frame: frame["type"] == "log")
    assert [frame["type"] for frame in frames] == ["job", "log"]
    assert frames[0]["job"]["state"] == "failed"
    assert numbers(frames) == [2, 3]
    assert await close_code(communicator) == 1000


async def test_lines_of_a_replaced_run_are_not_kept() -> None:
    owner = new_owner()
    job, writer = await running(owner)
    await write(writer, "first run")
    await database_sync_to_async(Job.objects.filter(pk=job.pk).update)(attempts=2)  # taken for lost, run again
    await write(writer, "a late line of the first run")
    again = JobLogWriter(job_id=job.id, attempt=2)
    await write(again, "second run")
    kept = await database_sync_to_async(lambda: list(JobLogLine.objects.filter(job=job).values_list("n", "text")))()
    assert kept == [(1, "first run"), (2, "second run")]
