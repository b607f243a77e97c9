"""Property-style tests of the seq rule (docs/contract.md#job-state), against the live daphne and the real Redis.

Each scenario is one seeded random interleaving of job changes, sockets connecting at
random times, and sockets closing and reconnecting at random times. The changes come
either from the real services and publisher driven step by step here (the worker's
write-behind path included: `RunningJob` publishes first and writes the row later, so a
reconnect's snapshot may be older than frames already shown), or from real `sleep` jobs
on the Celery worker, cancelled now and then through the API.

What every scenario checks, for every socket:

- within one connection, the seqs of a job strictly increase (the server never repeats
  or goes back on a socket);
- a given seq always carries the same job, whichever connection carried it, so a client
  that drops a frame by its seq drops only a state it has seen or an older one;
- a client applying the contract's rule (show a frame only when its seq is above the highest
  shown) never shows an older state after a newer one, across reconnects: its states
  never go back in the lifecycle and its progress never goes back;
- every socket ends on the job's terminal state with the job's final seq, the same job
  the API answers.

A failing scenario names its seed in the test id; JOBSTREAM_STREAM_SEED moves the base.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.backends.db import SessionStore
from django.test.utils import override_settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY, Owner
from jobs.progress import ProgressUpdate
from jobs.serializers import JOB_KEYS
from jobs.services import RunningJob, job_cancel, job_finish, job_start
from tests.conftest import LiveServer
from tests.waiting import async_wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BASE_SEED = int(os.environ.get("JOBSTREAM_STREAM_SEED", "20261125"))
PUBLISHER_SCENARIOS = 44  # about 0.2 s each: the seq rule under many orders of events
WORKER_SCENARIOS = 6  # about 1 s each: the same with real worker jobs and API cancels
ACTIONS = 45  # random steps per publisher scenario
OPEN_TIMEOUT = 10.0  # seconds for a handshake on this shared machine
SETTLE_TIMEOUT = 10.0  # seconds for every socket to show the final state once the jobs ended
JOBS_TIMEOUT = 40.0  # seconds for real worker jobs to end, queued behind other tests' jobs
TERMINAL = {"succeeded", "failed", "cancelled"}
LIFECYCLE_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


# --- one client and its connections ----------------------------------------------


@dataclass
class Connection:
    """One socket a client opened: every job payload it carried, in arrival order."""

    path: str
    socket: ClientConnection
    jobs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    first_seqs: dict[str, int] = field(default_factory=dict)  # the snapshot's seq per job
    closed_by_client: bool = False
    close_code: int | None = None
    reader: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.close_code is None


@dataclass
class Watcher:
    """A client (a page) watching one job or all of its owner's jobs, as the job pages do (jobs/static/jobs/page.js)."""

    path: str
    connections: list[Connection] = field(default_factory=list)
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> the job shown
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # everything shown, in order
    stale_snapshots: int = 0  # reconnect snapshots older than what was shown: the rule drops them

    @property
    def single_job(self) -> bool:
        return self.path != "/ws/jobs/"

    @property
    def current(self) -> Connection | None:
        return self.connections[-1] if self.connections and self.connections[-1].open else None

    def apply(self, job: dict[str, Any]) -> None:
        """docs/contract.md#job-state: keep the highest seq shown; drop any frame whose seq is not above it."""
        before = self.shown.get(job["id"])
        if before is not None and job["seq"] <= before["seq"]:
            return
        self.shown[job["id"]] = job
        self.history.setdefault(job["id"], []).append(job)

    def finished(self) -> bool:
        """A single-job socket the server closed with 1000 after the terminal frame: done."""
        last = self.connections[-1] if self.connections else None
        return (
            self.single_job
            and last is not None
            and last.close_code == 1000
            and not last.closed_by_client
            and any(job["state"] in TERMINAL for job in last.jobs)
        )


async def read_frames(watcher: Watcher, connection: Connection) -> None:
    try:
        async for text in connection.socket:
            frame = json.loads(text)
            if frame["type"] == "snapshot":
                jobs = list(reversed(frame["jobs"]))  # oldest first, as the page applies them
            elif frame["type"] == "job":
                jobs = [frame["job"]]
            elif frame["type"] == "log":  # the job's log (tests/e2e/test_job_log.py): no seq rule of its own
                continue
            else:
                connection.errors.append(frame)
                continue
            for job in jobs:
                if job["id"] not in connection.first_seqs:
                    connection.first_seqs[job["id"]] = job["seq"]
                    shown = watcher.shown.get(job["id"])
                    if shown is not None and job["seq"] < shown["seq"]:
                        watcher.stale_snapshots += 1
                connection.jobs.append(job)
                watcher.apply(job)
    except ConnectionClosed:
        pass
    finally:
        connection.close_code = connection.socket.close_code or -1


class Visitor:
    """A browser session on the live server: its cookies, its owner, its watchers."""

    def __init__(self, live_server: LiveServer, http: httpx.AsyncClient, owner: Owner) -> None:
        self.live_server = live_server
        self.http = http
        self.owner = owner
        self.watchers: list[Watcher] = []

    async def open(self, watcher: Watcher) -> None:
        socket = await connect(
            f"{self.live_server.ws_url}{watcher.path}",
            origin=Origin(self.live_server.url),
            additional_headers={"Cookie": f"sessionid={self.http.cookies['sessionid']}"},
            open_timeout=OPEN_TIMEOUT,
        )
        connection = Connection(path=watcher.path, socket=socket)
        connection.reader = asyncio.ensure_future(read_frames(watcher, connection))
        watcher.connections.append(connection)

    async def close(self, watcher: Watcher) -> None:
        connection = watcher.current
        if connection is None:
            return
        connection.closed_by_client = True
        await connection.socket.close()
        assert connection.reader is not None
        await connection.reader

    async def act_on_sockets(self, rng: random.Random) -> None:
        """Connects, closes or reconnects one watcher at random."""
        watcher = rng.choice(self.watchers)
        if watcher.current is None:
            await self.open(watcher)
        elif rng.random() < 0.5:
            await self.close(watcher)
        else:
            await self.close(watcher)
            await self.open(watcher)

    async def close_all(self) -> None:
        for watcher in self.watchers:
            await self.close(watcher)


@pytest.fixture
async def visitor(live_server: LiveServer, live_server_env: dict[str, str]) -> AsyncIterator[Visitor]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=OPEN_TIMEOUT) as http:
        assert (await http.get("/")).status_code == 200  # creates the session and its owner
        owner = Owner(token=await owner_token(http.cookies["sessionid"], live_server_env["SECRET_KEY"]))
        visitor = Visitor(live_server, http, owner)
        try:
            yield visitor
        finally:
            await visitor.close_all()


@database_sync_to_async
def owner_token(session_key: str, secret_key: str) -> str:
    """The anonymous owner the live server gave this session (it signs with its own key)."""
    with override_settings(SECRET_KEY=secret_key):
        token: str = SessionStore(session_key=session_key)[SESSION_OWNER_KEY]
    return token


# --- the checks ------------------------------------------------------------------


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    """The job minus queue_position, which may change while the job does not (others leave the queue)."""
    return {key: value for key, value in job.items() if key != "queue_position"}


async def settle_and_check(visitor: Visitor, job_ids: list[str], seed: int) -> None:
    """Brings every client to the end as the job pages would, then checks every property."""
    context = f"seed {seed}"
    final = {job_id: (await visitor.http.get(f"/api/jobs/{job_id}/")).json() for job_id in job_ids}
    assert all(job["state"] in TERMINAL for job in final.values()), context
    rows = await database_sync_to_async(lambda: {str(j.id): j.seq for j in Job.objects.filter(pk__in=job_ids)})()
    assert rows == {job_id: job["seq"] for job_id, job in final.items()}, context  # the API answers the row

    # A page reconnects after any close except 4404 and the 1000 after a terminal frame.
    for watcher in visitor.watchers:
        if watcher.current is None and not watcher.finished():
            await visitor.open(watcher)

    def watched(watcher: Watcher) -> list[str]:
        if watcher.single_job:
            return [watcher.path.removeprefix("/ws/jobs/").removesuffix("/")]
        return job_ids

    async def all_show_the_end() -> bool:
        return all(
            job_id in watcher.shown and watcher.shown[job_id]["seq"] >= final[job_id]["seq"]
            for watcher in visitor.watchers
            for job_id in watched(watcher)
        )

    ended = await async_wait_until(all_show_the_end, timeout=SETTLE_TIMEOUT)
    await visitor.close_all()
    shown = {w.path: {j: (w.shown.get(j) or {}).get("seq") for j in watched(w)} for w in visitor.watchers}
    assert ended, f"{context}: not every socket reached the final seqs {[j['seq'] for j in final.values()]}: {shown}"

    by_seq: dict[tuple[str, int], dict[str, Any]] = {}
    for watcher in visitor.watchers:
        for connection in watcher.connections:
            where = f"{context}, {connection.path} connection {watcher.connections.index(connection)}"
            assert connection.errors == [], f"{where}: error frames {connection.errors}"
            assert connection.close_code in (1000, 1001) or connection.closed_by_client, (
                f"{where}: closed with {connection.close_code}"
            )
            for job_id in {job["id"] for job in connection.jobs}:
                seqs = [job["seq"] for job in connection.jobs if job["id"] == job_id]
                assert seqs == sorted(set(seqs)), f"{where}: seqs not strictly increasing: {seqs}"
            if watcher.single_job and any(job["state"] in TERMINAL for job in connection.jobs):
                assert connection.jobs[-1]["state"] in TERMINAL, f"{where}: a frame after the terminal one"
                if not connection.closed_by_client:
                    assert connection.close_code == 1000, f"{where}: closed {connection.close_code} after the end"
            for job in connection.jobs:
                assert set(job) == JOB_KEYS, f"{where}: keys {sorted(job)}"
                same = by_seq.setdefault((job["id"], job["seq"]), job)
                assert comparable(same) == comparable(job), f"{where}: seq {job['seq']} carried two states"

        for job_id in watched(watcher):
            history = watcher.history[job_id]
            ranks = [LIFECYCLE_RANK[job["state"]] for job in history]
            assert ranks == sorted(ranks), f"{context}, {watcher.path}: states went back: {history}"
            reported = [job["progress"] is not None for job in history]
            assert reported == sorted(reported), f"{context}, {watcher.path}: progress vanished: {history}"
            currents = [job["progress"]["current"] for job in history if job["progress"] is not None]
            assert currents == sorted(currents), f"{context}, {watcher.path}: progress went back: {currents}"
            assert comparable(watcher.shown[job_id]) == comparable(final[job_id]), (
                f"{context}, {watcher.path}: ended on {watcher.shown[job_id]}, the API says {final[job_id]}"
            )


# --- scenarios driven through the services and the publisher -----------------------


@pytest.fixture(autouse=True)
def _no_running_limit(settings: Any) -> None:
    settings.JOB_QUOTA_RUNNING = 0  # this test plays the worker and starts an owner's jobs in any order


@database_sync_to_async
def make_jobs(owner: Owner, count: int) -> list[str]:
    """Queued rows with no task behind them: this test plays the worker."""
    ids = []
    for _ in range(count):
        now = datetime.now(tz=UTC)
        job = Job.objects.create(
            owner_token=owner.token or "",
            kind="sleep",
            params={"steps": 100, "step_seconds": 0.01},
            seq=1,
            created_at=now,
            updated_at=now,
            dispatched_at=now,
        )
        ids.append(str(job.id))
    return ids


class JobDriver:
    """Moves one job through its life as the web process and a worker do, through the real
    services: start, progress through `RunningJob` (published at once, the row written
    behind), cancel requests from the web, and the terminal write carrying the last progress."""

    PROGRESS_TOTAL = 100

    def __init__(self, job_id: str, owner: Owner) -> None:
        self.job_id = uuid.UUID(job_id)
        self.owner = owner
        self.running: RunningJob | None = None
        self.step = 0
        self.ended = False

    def act(self, rng: random.Random) -> None:
        if self.ended:
            return
        if self.running is None:
            if rng.random() < 0.15:
                self.cancel_queued()
            else:
                self.start()
            return
        roll = rng.random()
        if roll < 0.1:
            if self.running.persist():  # the worker's write-behind, which also hears a cancel
                self.finish(JobState.CANCELLED)
        elif roll < 0.16:
            job_cancel(owner=self.owner, job_id=self.job_id)  # running: asks; the next persist sees it
        elif roll < 0.26 and self.step >= 2:
            self.finish(rng.choice([JobState.SUCCEEDED, JobState.FAILED]))
        else:
            self.report(rng)

    def start(self) -> None:
        job = job_start(job_id=self.job_id, task_id=str(self.job_id))
        assert job is not None
        self.running = RunningJob(job)

    def cancel_queued(self) -> None:
        job = job_cancel(owner=self.owner, job_id=self.job_id)
        assert job.state == JobState.CANCELLED
        self.ended = True

    def report(self, rng: random.Random) -> None:
        assert self.running is not None
        self.step += 1
        update = ProgressUpdate(
            current=self.step,
            total=self.PROGRESS_TOTAL,
            message=f"step {self.step}",
            rate=rng.uniform(1, 50),
            eta_seconds=rng.uniform(0, 100),
            at=time.time(),
        )
        if self.running.report(update):
            self.finish(JobState.CANCELLED)

    def finish(self, state: JobState) -> None:
        assert self.running is not None
        job = job_finish(
            job_id=self.job_id,
            state=state,
            seq_above=self.running.job.seq,
            progress=self.running.last_update,  # as job_run does: the last progress is never lost
            result={"steps": self.step} if state == JobState.SUCCEEDED else None,
            error="It failed, as the scenario asked." if state == JobState.FAILED else "",
        )
        assert job is not None and job.state == state
        self.ended = True

    def finish_now(self) -> None:
        if self.ended:
            return
        if self.running is None:
            self.start()
        self.finish(JobState.SUCCEEDED)


@pytest.mark.parametrize("seed", [BASE_SEED + n for n in range(PUBLISHER_SCENARIOS)], ids=lambda seed: f"seed={seed}")
async def test_random_publishes_connects_and_reconnects_keep_the_seq_rule(visitor: Visitor, seed: int) -> None:
    rng = random.Random(seed)
    job_ids = await make_jobs(visitor.owner, rng.randint(1, 3))
    drivers = [JobDriver(job_id, visitor.owner) for job_id in job_ids]
    paths = ["/ws/jobs/", *(f"/ws/jobs/{job_id}/" for job_id in job_ids)]
    visitor.watchers = [Watcher(paths[0]), Watcher(rng.choice(paths[1:]))]
    visitor.watchers += [Watcher(rng.choice(paths)) for _ in range(rng.randint(0, 2))]

    for _ in range(ACTIONS):
        roll = rng.random()
        if roll < 0.5:
            await database_sync_to_async(rng.choice(drivers).act)(rng)
        elif roll < 0.85:
            await visitor.act_on_sockets(rng)
        else:
            await asyncio.sleep(rng.uniform(0, 0.02))  # not a wait: lets frames land between steps
    for driver in drivers:
        await database_sync_to_async(driver.finish_now)()

    await settle_and_check(visitor, job_ids, seed)


# --- scenarios with real worker jobs ----------------------------------------------


async def post_sleep_job(visitor: Visitor, *, steps: int, step_seconds: float) -> str:
    response = await visitor.http.post(
        "/api/jobs/",
        json={"kind": "sleep", "params": {"steps": steps, "step_seconds": step_seconds}},
        headers={"X-CSRFToken": visitor.http.cookies["csrftoken"]},
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.mark.parametrize(
    "seed", [BASE_SEED + 1000 + n for n in range(WORKER_SCENARIOS)], ids=lambda seed: f"seed={seed}"
)
async def test_random_reconnects_around_real_worker_jobs_keep_the_seq_rule(
    visitor: Visitor, worker: Any, seed: int
) -> None:
    rng = random.Random(seed)
    visitor.watchers = [Watcher("/ws/jobs/")]
    if rng.random() < 0.5:
        await visitor.open(visitor.watchers[0])  # before any job: it learns of them as frames
    job_ids = [
        await post_sleep_job(visitor, steps=rng.randint(5, 15), step_seconds=rng.choice([0.02, 0.05]))
        for _ in range(rng.randint(1, 2))
    ]
    visitor.watchers += [Watcher(f"/ws/jobs/{rng.choice(job_ids)}/") for _ in range(rng.randint(1, 2))]
    to_cancel = rng.choice(job_ids) if rng.random() < 0.5 else None

    async def states() -> list[str]:
        return [(await visitor.http.get(f"/api/jobs/{job_id}/")).json()["state"] for job_id in job_ids]

    deadline = time.monotonic() + JOBS_TIMEOUT
    while not all(state in TERMINAL for state in await states()):
        assert time.monotonic() < deadline, f"seed {seed}: the jobs did not end within {JOBS_TIMEOUT} s"
        await visitor.act_on_sockets(rng)
        if to_cancel is not None and rng.random() < 0.2:
            cancel = await visitor.http.post(
                f"/api/jobs/{to_cancel}/cancel/", headers={"X-CSRFToken": visitor.http.cookies["csrftoken"]}
            )
            assert cancel.status_code in (202, 409), cancel.text  # 409: it ended first
            to_cancel = None
        await asyncio.sleep(rng.uniform(0.01, 0.08))  # not a wait: the pace of the random socket actions

    await settle_and_check(visitor, job_ids, seed)
