"""Server-Sent Events at /api/jobs/<id>/events/, against the live daphne and a real worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.waiting import wait_until

STREAM_TIMEOUT = 30.0  # seconds a whole stream may take: the jobs here run for about 2 s
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Event:
    id: int
    event: str
    data: dict[str, Any]


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A visitor with a session: the first GET / creates it (cookies persist)."""
    with httpx.Client(base_url=live_server.url, timeout=STREAM_TIMEOUT) as client:
        assert client.get("/").status_code == 200
        yield client


def start_job(client: httpx.Client, *, steps: int, step_seconds: float) -> dict[str, Any]:
    response = client.post(
        "/api/jobs/",
        json={"kind": "sleep", "params": {"steps": steps, "step_seconds": step_seconds}},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def finished_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def ended() -> bool:
        return client.get(f"/api/jobs/{job_id}/").json()["state"] in TERMINAL

    assert wait_until(ended, timeout=STREAM_TIMEOUT, interval=0.1), "the job never ended"
    job: dict[str, Any] = client.get(f"/api/jobs/{job_id}/").json()
    return job


def read_events(response: httpx.Response) -> list[Event]:
    """Every event of a stream, until the server ends it."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields and fields.get("event") != "log":  # log events: test_log_sse.py
                events.append(Event(id=int(fields["id"]), event=fields["event"], data=json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


def stream(client: httpx.Client, job_id: str, **headers: str) -> tuple[httpx.Response, list[Event]]:
    with client.stream("GET", f"/api/jobs/{job_id}/events/", headers=headers) as response:
        if response.status_code != 200:
            response.read()  # the error body, for the caller to check
            return response, []
        events = read_events(response)
    return response, events


def test_running_job_streams_events_with_increasing_ids_until_terminal(client: httpx.Client, worker: Any) -> None:
    job = start_job(client, steps=20, step_seconds=0.1)

    response, events = stream(client, job["id"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(events) >= 3, events  # the state then, progress, the end
    assert all(event.event == "job" for event in events)
    assert all(event.id == event.data["seq"] for event in events)
    ids = [event.id for event in events]
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"
    assert all(event.data["id"] == job["id"] for event in events)
    assert [event.data["state"] for event in events][-1] == "succeeded"
    assert all(event.data["state"] not in TERMINAL for event in events[:-1])


def test_finished_job_without_last_event_id_sends_one_event_and_ends(client: httpx.Client, worker: Any) -> None:
    job = finished_job(client, start_job(client, steps=2, step_seconds=0)["id"])

    response, events = stream(client, job["id"])

    assert response.status_code == 200
    assert len(events) == 1
    assert events[0].id == job["seq"]
    assert events[0].data["state"] == "succeeded"


@pytest.mark.parametrize("past", [0, 5])
def test_finished_job_with_last_event_id_at_or_past_terminal_sends_nothing(
    client: httpx.Client, worker: Any, past: int
) -> None:
    job = finished_job(client, start_job(client, steps=2, step_seconds=0)["id"])

    response, events = stream(client, job["id"], **{"Last-Event-ID": str(job["seq"] + past)})

    assert response.status_code == 200
    assert events == []


def test_finished_job_with_last_event_id_below_terminal_sends_the_terminal_state(
    client: httpx.Client, worker: Any
) -> None:
    job = finished_job(client, start_job(client, steps=2, step_seconds=0)["id"])

    _, events = stream(client, job["id"], **{"Last-Event-ID": str(job["seq"] - 1)})

    assert [event.id for event in events] == [job["seq"]]


def test_garbage_last_event_id_gets_400_naming_it(client: httpx.Client, worker: Any) -> None:
    job = start_job(client, steps=1, step_seconds=0)

    response, _ = stream(client, job["id"], **{"Last-Event-ID": "abc"})

    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["errors"]


def test_another_owners_job_gets_404(client: httpx.Client, live_server: LiveServer, worker: Any) -> None:
    job = start_job(client, steps=1, step_seconds=0)
    with httpx.Client(base_url=live_server.url, timeout=STREAM_TIMEOUT) as stranger:
        stranger.get("/")

        response, events = stream(stranger, job["id"])

    assert response.status_code == 404
    assert events == []
    assert response.json() == {"errors": {"id": ["No job with this id."]}}


def test_malformed_job_id_gets_404(client: httpx.Client) -> None:
    response, _ = stream(client, "not-a-uuid")

    assert response.status_code == 404
