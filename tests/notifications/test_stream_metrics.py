"""`/metrics` of the live daphne under real traffic: a job run on the real worker lands
in the database histograms, sockets and event streams opened and closed show in
`jobstream_sockets_open`, and the frames a socket gets show in the delivered count and
the delivery-lag histogram."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from notifications.stream_metrics import EVENT_STREAM, JOB_SOCKET, OWNER_SOCKET
from tests.conftest import LiveServer
from tests.e2e.test_stream import next_frame, open_socket
from tests.scrapes import Scrape, ascrape
from tests.waiting import async_wait_until

TIMEOUT = 15.0  # seconds for a frame, or for a figure to show what happened
TERMINAL = {"succeeded", "failed", "cancelled"}
SOCKETS = 3


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200  # the session
        yield client


async def start_job(client: httpx.AsyncClient, *, steps: int, step_seconds: float) -> dict[str, Any]:
    response = await client.post(
        "/api/jobs/",
        json={"kind": "sleep", "params": {"steps": steps, "step_seconds": step_seconds}},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def figure_reaches(client: httpx.AsyncClient, wanted: float, name: str, **labels: str) -> Scrape:
    """Scrapes until the sample is `wanted`; the last scrape (which the caller asserts on)."""
    last: list[Scrape] = []

    async def there() -> bool:
        last[:] = [await ascrape(client, "/metrics")]
        return last[0].value(name, **labels) == wanted

    await async_wait_until(there, timeout=TIMEOUT, interval=0.1)
    return last[0]


async def test_a_finished_job_lands_in_the_database_figures_and_its_frames_in_the_stream_figures(
    live_server: LiveServer, client: httpx.AsyncClient, worker: Any
) -> None:
    before = await ascrape(client, "/metrics")
    job = await start_job(client, steps=20, step_seconds=0.05)
    pushed = 0  # job frames after the first (which is read from the database, not pushed)
    during: Scrape | None = None
    async with open_socket(live_server, client, f"/ws/jobs/{job['id']}/") as socket:
        first = await next_frame(socket)
        assert first["type"] == "job"
        state = first["job"]["state"]
        while state not in TERMINAL:
            frame = await next_frame(socket)
            if frame["type"] != "job":
                continue
            pushed += 1
            state = frame["job"]["state"]
            if pushed == 3:
                during = await ascrape(client, "/metrics")
    assert state == "succeeded"
    assert during is not None and pushed > 3

    def grew(scrape: Scrape, name: str, **labels: str) -> float:
        return scrape.value(name, **labels) - before.value(name, **labels)

    # frames delivered grows while the job runs, by at least what this socket was sent
    assert grew(during, "jobstream_frames_delivered_total") >= 4
    run_count = before.value("jobstream_run_seconds_count", kind="sleep", state="succeeded") + 1
    after = await figure_reaches(client, run_count, "jobstream_run_seconds_count", kind="sleep", state="succeeded")
    assert after.value("jobstream_frames_delivered_total") > during.value("jobstream_frames_delivered_total")
    assert grew(after, "jobstream_frames_delivered_total") >= pushed + 2  # the first frame and the log backfill
    assert grew(after, "jobstream_delivery_lag_seconds_count") >= pushed
    assert 0 <= grew(after, "jobstream_delivery_lag_seconds_sum") < pushed * 5.0
    lag_in_10s = grew(after, "jobstream_delivery_lag_seconds_bucket", le="10.0")
    assert lag_in_10s == grew(after, "jobstream_delivery_lag_seconds_count")  # loopback: none near 10 s

    # the job itself, in the database figures: one run of the sleep kind, in its state
    assert grew(after, "jobstream_run_seconds_count", kind="sleep", state="succeeded") == 1
    assert grew(after, "jobstream_run_seconds_sum", kind="sleep", state="succeeded") >= 20 * 0.05 * 0.9
    assert grew(after, "jobstream_run_seconds_bucket", kind="sleep", state="succeeded", le="0.5") == 0
    assert grew(after, "jobstream_run_seconds_bucket", kind="sleep", state="succeeded", le="+Inf") == 1
    assert grew(after, "jobstream_run_seconds_count", kind="sleep", state="failed") == 0
    assert grew(after, "jobstream_queue_wait_seconds_count", kind="sleep") == 1
    assert grew(after, "jobstream_jobs_total", kind="sleep", state="queued") == 1
    assert grew(after, "jobstream_jobs_total", kind="sleep", state="running") == 1
    assert grew(after, "jobstream_jobs_total", kind="sleep", state="succeeded") == 1


async def test_sockets_opened_and_closed_show_in_the_gauge(live_server: LiveServer, client: httpx.AsyncClient) -> None:
    base = (await ascrape(client, "/metrics")).value("jobstream_sockets_open", path=OWNER_SOCKET)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(SOCKETS):
            socket = await stack.enter_async_context(open_socket(live_server, client, "/ws/jobs/"))
            assert (await next_frame(socket))["type"] == "snapshot"
        opened = await figure_reaches(client, base + SOCKETS, "jobstream_sockets_open", path=OWNER_SOCKET)
        assert opened.value("jobstream_sockets_open", path=OWNER_SOCKET) == base + SOCKETS
    closed = await figure_reaches(client, base, "jobstream_sockets_open", path=OWNER_SOCKET)
    assert closed.value("jobstream_sockets_open", path=OWNER_SOCKET) == base


async def test_a_refused_socket_leaves_the_gauge_as_it_was(live_server: LiveServer, client: httpx.AsyncClient) -> None:
    base = (await ascrape(client, "/metrics")).value("jobstream_sockets_open", path=JOB_SOCKET)
    async with open_socket(live_server, client, "/ws/jobs/not-a-job/") as socket:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.recv(), TIMEOUT)
        assert socket.close_code == 4404
    after = await figure_reaches(client, base, "jobstream_sockets_open", path=JOB_SOCKET)
    assert after.value("jobstream_sockets_open", path=JOB_SOCKET) == base


async def test_an_event_stream_shows_in_the_gauge_while_open(
    live_server: LiveServer, client: httpx.AsyncClient, worker: Any
) -> None:
    base = (await ascrape(client, "/metrics")).value("jobstream_sockets_open", path=EVENT_STREAM)
    job = await start_job(client, steps=60, step_seconds=0.05)
    try:
        async with client.stream("GET", f"/api/jobs/{job['id']}/events/") as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), TIMEOUT)).startswith("id: ")
            opened = await figure_reaches(client, base + 1, "jobstream_sockets_open", path=EVENT_STREAM)
            assert opened.value("jobstream_sockets_open", path=EVENT_STREAM) == base + 1
        closed = await figure_reaches(client, base, "jobstream_sockets_open", path=EVENT_STREAM)
        assert closed.value("jobstream_sockets_open", path=EVENT_STREAM) == base
    finally:
        await client.post(f"/api/jobs/{job['id']}/cancel/", headers={"X-CSRFToken": client.cookies["csrftoken"]})
