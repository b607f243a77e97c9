"""Server-Sent Events resumed with `Last-Event-ID`, and the polling fallback, against the
live daphne and a real worker: a resumed stream never repeats or goes back on a seq, and
GET /api/jobs/<id>/ answers the very job the streams carry."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect
from websockets.typing import Origin

from jobs.serializers import JOB_KEYS
from tests.conftest import LiveServer
from tests.notifications.test_sse import Event, finished_job, read_events, start_job, stream
from tests.waiting import wait_until

STREAM_TIMEOUT = 30.0  # seconds a whole stream may take, queued behind another test's job included
TERMINAL = {"succeeded", "failed", "cancelled"}
STREAMS_MAX = 200  # reconnects before the test gives up: the job sends about a dozen events
SEQ_DIGITS_MAX = 19  # a seq is a PositiveBigIntegerField: any of them fits in 19 digits


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A visitor with a session: the first GET / creates it (cookies persist)."""
    with httpx.Client(base_url=live_server.url, timeout=STREAM_TIMEOUT) as client:
        assert client.get("/").status_code == 200
        yield client


def read_some_events(client: httpx.Client, job_id: str, count: int, last_event_id: int | None) -> list[Event]:
    """Up to `count` events, then hangs up, as a browser whose connection drops."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[Event] = []
    fields: dict[str, str] = {}
    with client.stream("GET", f"/api/jobs/{job_id}/events/", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "":
                if "data" in fields and fields.get("event") != "log":  # log events: test_log_sse.py
                    events.append(Event(id=int(fields["id"]), event=fields["event"], data=json.loads(fields["data"])))
                    if len(events) == count or events[-1].data["state"] in TERMINAL:
                        break
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_resumed_with_last_event_id_never_repeats_an_older_seq(
    client: httpx.Client, worker: Any, seed: int
) -> None:
    rng = random.Random(seed)
    job = start_job(client, steps=20, step_seconds=0.05)
    seen: list[int] = []
    last: int | None = None
    streams = 0
    while streams < STREAMS_MAX:
        streams += 1
        events = read_some_events(client, job["id"], rng.randint(1, 3), last)
        ids = [event.id for event in events]
        assert ids, f"seed {seed}: a stream resumed after {last} ended with nothing"
        assert all(event.id == event.data["seq"] for event in events)
        assert ids == sorted(set(ids)), f"seed {seed}: ids not strictly increasing: {ids}"
        if last is not None:
            assert ids[0] > last, f"seed {seed}: resumed after {last}, got {ids}"
        seen += ids
        last = ids[-1]
        if events[-1].data["state"] in TERMINAL:
            break
    else:
        pytest.fail(f"seed {seed}: no terminal event in {streams} streams: {seen}")

    final = client.get(f"/api/jobs/{job['id']}/").json()
    assert seen == sorted(set(seen)), f"seed {seed}: across {streams} streams: {seen}"
    assert seen[-1] == final["seq"]
    # A browser's EventSource reconnects once more after the end: nothing comes, the stream ends.
    response, after = stream(client, job["id"], **{"Last-Event-ID": str(final["seq"])})
    assert response.status_code == 200 and after == []


def test_empty_last_event_id_is_treated_as_absent(client: httpx.Client, worker: Any) -> None:
    job = finished_job(client, start_job(client, steps=1, step_seconds=0)["id"])

    with client.stream("GET", f"/api/jobs/{job['id']}/events/", headers={"Last-Event-ID": ""}) as response:
        events = read_events(response)

    assert response.status_code == 200
    assert [event.id for event in events] == [job["seq"]]


@pytest.mark.parametrize("value", ["9999", "9" * SEQ_DIGITS_MAX])
def test_last_event_id_past_any_seq_sends_nothing_for_a_finished_job(
    client: httpx.Client, worker: Any, value: str
) -> None:
    job = finished_job(client, start_job(client, steps=1, step_seconds=0)["id"])

    with client.stream("GET", f"/api/jobs/{job['id']}/events/", headers={"Last-Event-ID": value}) as response:
        events = read_events(response)

    assert response.status_code == 200
    assert events == []


# --- the polling fallback answers what the streams carry ---------------------------------


def test_finished_job_is_the_same_json_over_polling_sse_and_both_sockets(
    client: httpx.Client, live_server: LiveServer, worker: Any
) -> None:
    job_id = start_job(client, steps=3, step_seconds=0.01)["id"]
    assert wait_until(
        lambda: client.get(f"/api/jobs/{job_id}/").json()["state"] in TERMINAL, timeout=STREAM_TIMEOUT, interval=0.05
    )

    polled = client.get(f"/api/jobs/{job_id}/").json()
    listed = next(job for job in client.get("/api/jobs/").json()["results"] if job["id"] == job_id)
    _, events = stream(client, job_id)
    cookie = {"Cookie": f"sessionid={client.cookies['sessionid']}"}
    with connect(
        f"{live_server.ws_url}/ws/jobs/{job_id}/", origin=Origin(live_server.url), additional_headers=cookie
    ) as s:
        job_frame = json.loads(s.recv(timeout=STREAM_TIMEOUT))
    with connect(f"{live_server.ws_url}/ws/jobs/", origin=Origin(live_server.url), additional_headers=cookie) as s:
        snapshot = json.loads(s.recv(timeout=STREAM_TIMEOUT))

    assert polled["state"] == "succeeded"
    assert set(polled) == JOB_KEYS  # no error_detail key for an owner who is not staff, as in the frames
    assert listed == polled
    assert [event.data for event in events] == [polled]
    assert job_frame == {"type": "job", "job": polled}
    assert next(job for job in snapshot["jobs"] if job["id"] == job_id) == polled


def test_running_job_polled_matches_the_stream_frame_of_the_same_seq(client: httpx.Client, worker: Any) -> None:
    """While a job runs, a poll is a state the stream also carried (same seq, same job), or an older one."""
    job_id = start_job(client, steps=20, step_seconds=0.05)["id"]
    polls: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/jobs/{job_id}/events/") as response:
        events: list[Event] = []
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields and fields.get("event") != "log":  # log events: test_log_sse.py
                    events.append(Event(id=int(fields["id"]), event=fields["event"], data=json.loads(fields["data"])))
                    polls.append(client.get(f"/api/jobs/{job_id}/").json())
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    by_seq = {event.id: event.data for event in events}
    assert events[-1].data["state"] == "succeeded"
    for poll in polls:
        assert set(poll) == JOB_KEYS
        if poll["seq"] in by_seq and poll["state"] != "queued":  # a queued job's place in line moves on its own
            assert poll == by_seq[poll["seq"]]
    assert polls[-1] == events[-1].data
