"""A job's log on its event stream (docs/contract.md#job-logs): `event: log` events with
no `id:`, `?log_after=N` as on the socket, every line before the terminal job event, and
the resume of an ended job."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from django.contrib.sessions.backends.db import SessionStore

from jobs.log_writer import JobLogWriter
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from jobs.services import job_finish
from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_TIMEOUT = 15.0  # seconds for the stream's next event


@pytest.fixture
def visitor(live_server: LiveServer) -> Iterator[tuple[httpx.Client, str]]:
    """A client whose session owns jobs made here, and the owner's token."""
    token = secrets.token_hex(16)
    session = SessionStore()
    session[SESSION_OWNER_KEY] = token
    session.save()
    with httpx.Client(
        base_url=live_server.url, timeout=STREAM_TIMEOUT, cookies={"sessionid": session.session_key or ""}
    ) as client:
        yield client, token


def running_job(token: str, *lines: str) -> tuple[Job, JobLogWriter]:
    now = datetime.now(UTC)
    job = Job.objects.create(
        owner_token=token, kind="sleep", params={"steps": 1}, state=JobState.RUNNING, attempts=1, seq=1,
        created_at=now, updated_at=now,
    )  # fmt: skip
    writer = JobLogWriter(job_id=job.id, attempt=1)
    write(writer, *lines)
    return job, writer


def write(writer: JobLogWriter, *lines: str) -> None:
    for line in lines:
        writer.log(line)
    while writer.pending:
        writer.flush()


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Each event of a stream as {"id", "event", "data"} ("id" None when it has none)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield {"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def line_numbers(seen: list[dict[str, Any]]) -> list[int]:
    return [line["n"] for event in seen if event["event"] == "log" for line in event["data"]["lines"]]


def test_a_running_jobs_stream_sends_the_backfill_then_live_lines_all_before_the_terminal_event(
    visitor: tuple[httpx.Client, str],
) -> None:
    client, token = visitor
    job, writer = running_job(token, "one", "two", "three")
    seen: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/jobs/{job.id}/events/?log_after=1") as response:
        assert response.status_code == 200
        stream = events(response)
        seen += [next(stream), next(stream)]
        assert [event["event"] for event in seen] == ["job", "log"]
        assert seen[1]["id"] is None  # ids stay job seqs
        assert seen[1]["data"] == {**seen[1]["data"], "total": 3, "dropped": 0}
        assert set(seen[1]["data"]) == {"lines", "total", "dropped"}
        write(writer, "four", "five")
        write(writer, "six")
        job_finish(job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
        seen += list(stream)  # until the server ends it
    assert line_numbers(seen) == [2, 3, 4, 5, 6]
    assert seen[-1]["event"] == "job" and seen[-1]["data"]["state"] == "succeeded"


def test_the_resume_of_an_ended_job_with_log_after_sends_the_missing_lines_then_ends(
    visitor: tuple[httpx.Client, str],
) -> None:
    client, token = visitor
    job, _ = running_job(token, "one", "two", "three", "four")
    ended = job_finish(job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    assert ended is not None
    with client.stream(
        "GET", f"/api/jobs/{job.id}/events/?log_after=2", headers={"Last-Event-ID": str(ended.seq)}
    ) as response:
        seen = list(events(response))
    assert [event["event"] for event in seen] == ["log"]
    assert line_numbers(seen) == [3, 4]


def test_the_resume_of_an_ended_job_without_log_after_sends_nothing(visitor: tuple[httpx.Client, str]) -> None:
    client, token = visitor
    job, _ = running_job(token, "one")
    ended = job_finish(job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    assert ended is not None
    with client.stream("GET", f"/api/jobs/{job.id}/events/", headers={"Last-Event-ID": str(ended.seq)}) as response:
        assert list(events(response)) == []


def test_an_ended_jobs_stream_sends_its_terminal_state_then_its_log(visitor: tuple[httpx.Client, str]) -> None:
    client, token = visitor
    job, _ = running_job(token, "one", "two")
    job_finish(job_id=job.id, state=JobState.FAILED, attempt=1, error="it broke")
    with client.stream("GET", f"/api/jobs/{job.id}/events/") as response:
        seen = list(events(response))
    assert [event["event"] for event in seen] == ["job", "log"]
    assert seen[0]["data"]["state"] == "failed"
    assert line_numbers(seen) == [1, 2]


@pytest.mark.parametrize("raw", ["-1", "x", "1e3", "9" * 20])
def test_a_bad_log_after_gets_400_naming_it(visitor: tuple[httpx.Client, str], raw: str) -> None:
    client, token = visitor
    job, _ = running_job(token)
    response = client.get(f"/api/jobs/{job.id}/events/", params={"log_after": raw})
    assert response.status_code == 400
    assert "log_after" in response.json()["errors"]
