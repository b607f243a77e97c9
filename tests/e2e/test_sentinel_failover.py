"""A real Sentinel failover under running jobs, open sockets and open pages.

A master, a replica and three sentinels (tests/sentinel.py); a daphne, a Celery worker
and Celery beat (the sweeper) of the test's own, every use of Redis on the Sentinels by
the environment alone (REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_DB; REDIS_URL
points at a port where nothing listens, so a use that ignored the Sentinels shows).
While jobs run and an owner socket, a socket per job and two Chromium pages watch, the
test SIGKILLs the master just before one job ends, submits jobs while the Sentinels
have not yet promoted the replica, and then checks:

- every job running at the kill ends `succeeded`;
- the job that ended during the failover shows its true final state on every open
  socket and page within CONVERGE_AFTER_PROMOTION of the promotion;
- a submit during the failover gets 201, or 503 with Retry-After (never a 500);
- every job, those submitted during the failover included, ends within a bound that
  follows from the sweeper's interval (a job whose send failed is sent by the sweeper).

The timeline (kill → promotion → last socket or page converged) is printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from jobs.models import Job
from jobs.services.recovery import REDISPATCH_AFTER
from tests.conftest import ROOT
from tests.live_daphne import DaphneProcess, start_celery_worker
from tests.processes import stop_process
from tests.sentinel import SentinelSet
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = {"succeeded", "failed", "cancelled"}
SWEEP_INTERVAL = 2.0  # seconds (JOB_SWEEP_INTERVAL): the sweeper sends what the broker did not take
LONG_JOB = {"steps": 48, "step_seconds": 0.25}  # 12 s: running before the kill, after the promotion too
ENDING_JOB = {"steps": 12, "step_seconds": 0.25}  # 3 s: the kill falls just before its end
ENDING_STEPS_LEFT = 3  # steps (0.75 s) of the ending job left when the master is killed
SUBMITTED_JOB = {"steps": 2, "step_seconds": 0.1}
CONVERGE_AFTER_PROMOTION = 10.0  # seconds: the bound for every socket and page
START_TIMEOUT = 40.0  # seconds for daphne, the worker and beat to be up
WATCH_TIMEOUT = 15.0  # seconds for a socket or page to show a job running
FRAME_TIMEOUT = 0.5  # seconds a socket reader waits per frame before it checks whether to stop
# A job submitted during the failover, if its send failed, is sent by a sweep: the
# first sweep once the broker is back and the job is REDISPATCH_AFTER old. The worker's
# consumer reconnects with Celery's backoff (2, 4, 6 … s). Then the job runs.
SETTLE_AFTER_PROMOTION = REDISPATCH_AFTER + SWEEP_INTERVAL + 20.0


# --- the processes ------------------------------------------------------------------


@dataclass
class Stack:
    sentinels: SentinelSet
    daphne: DaphneProcess
    worker_log: Path
    beat_log: Path


@pytest.fixture(params=[False, True], ids=["open", "passwords"])
def sentinel_set(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """The conftest's set, and one whose master and sentinels each require a password
    (REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD)."""
    protected: bool = request.param
    started = SentinelSet(
        password="master:pw@/x" if protected else None,  # characters a sentinel:// URL must quote
        sentinel_password="sentinel-pw" if protected else None,
    ).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def stack(
    live_server_env: dict[str, str], sentinel_set: SentinelSet, transactional_db: None, tmp_path: Path
) -> Iterator[Stack]:
    env = {**live_server_env, **sentinel_set.env(db=2), "LOG_LEVEL": "INFO"}
    env["REDIS_URL"] = "redis://127.0.0.1:9/0"  # the discard port: nothing may use it
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CHANNEL_REDIS_URLS"):
        env.pop(name, None)
    env["JOB_SWEEP_INTERVAL"] = str(SWEEP_INTERVAL)
    env["JOB_QUOTA_RUNNING"] = "0"  # every job runs at once: the fair-share line is not under test
    daphne = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    worker: subprocess.Popen[bytes] | None = None
    beat: subprocess.Popen[bytes] | None = None
    try:
        daphne.start()
        worker = start_celery_worker(env=env, log=worker_log, pool="threads", concurrency=8)
        celery = str(Path(sys.executable).parent / "celery")
        with beat_log.open("wb") as out:
            beat = subprocess.Popen(
                [celery, "-A", "celery_app", "beat", "-l", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            for name, process, log in (("worker", worker, worker_log), ("beat", beat, beat_log)):
                assert process is not None
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{log.read_text(errors='replace')[-3000:]}")
            return " ready." in worker_log.read_text(errors="replace")

        if not wait_until(up, timeout=START_TIMEOUT, interval=0.2):
            raise RuntimeError(f"the worker was not ready within {START_TIMEOUT:.0f} s:\n{worker_log.read_text()}")
        yield Stack(sentinels=sentinel_set, daphne=daphne, worker_log=worker_log, beat_log=beat_log)
    finally:
        for process in (worker, beat):
            if process is not None and process.poll() is None:
                process.terminate()
        for process in (worker, beat):
            if process is not None:
                stop_process(process)
        daphne.stop()


# --- watchers -----------------------------------------------------------------------


@dataclass
class SocketWatch:
    """A WebSocket read in a thread: each job's states, with when each was first seen."""

    name: str
    socket: ClientConnection
    states: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # each job's newest frame
    close_code: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SocketWatch:
        threading.Thread(target=self._read, name=f"watch-{self.name}", daemon=True).start()
        return self

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                frame = json.loads(self.socket.recv(timeout=FRAME_TIMEOUT))
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.close_code = self.socket.close_code
                return
            jobs = frame.get("jobs", []) if frame["type"] == "snapshot" else [frame.get("job")]
            for job in jobs:
                if job:
                    self.latest[job["id"]] = job
                    self._saw(job["id"], job["state"])

    def _saw(self, job_id: str, state: str) -> None:
        seen = self.states.setdefault(job_id, [])
        if not seen or seen[-1][1] != state:
            seen.append((time.monotonic(), state))

    def state(self, job_id: str) -> str | None:
        seen = self.states.get(job_id)
        return seen[-1][1] if seen else None

    def shown_at(self, job_id: str, state: str) -> float | None:
        return next((at for at, seen in self.states.get(job_id, []) if seen == state), None)


@dataclass
class PageWatch:
    name: str
    page: Page

    def state(self, job_id: str) -> str | None:
        try:
            return self.page.locator(f"#job-{job_id}").get_attribute("data-state", timeout=1000)
        except PlaywrightTimeoutError:  # no card for the job (yet)
            return None


def open_socket(daphne: DaphneProcess, path: str, sessionid: str) -> ClientConnection:
    return connect(
        f"{daphne.ws_url}{path}",
        origin=Origin(daphne.url),
        additional_headers={"Cookie": f"sessionid={sessionid}"},
        open_timeout=WATCH_TIMEOUT,
        legacy=True,  # a connection to read in a thread and close at the test's end
    )


def opened(sockets: contextlib.ExitStack, socket: ClientConnection) -> ClientConnection:
    sockets.callback(socket.close)
    return socket


@dataclass
class Submit:
    status: int
    retry_after: str | None
    seconds: float
    job_id: str | None


def submit(client: httpx.Client, daphne: DaphneProcess, csrf: str, params: dict[str, float]) -> Submit:
    started = time.monotonic()
    response = client.post(
        f"{daphne.url}/api/jobs/", json={"kind": "sleep", "params": params}, headers={"X-CSRFToken": csrf}
    )
    job_id = response.json()["id"] if response.status_code == 201 else None
    return Submit(response.status_code, response.headers.get("Retry-After"), time.monotonic() - started, job_id)


def job_state(job_id: str) -> str:
    return str(Job.objects.values_list("state", flat=True).get(pk=job_id))


# --- the test -----------------------------------------------------------------------


def test_jobs_sockets_and_pages_survive_a_sentinel_failover(stack: Stack, browser: Browser) -> None:
    daphne, sentinels = stack.daphne, stack.sentinels
    context = browser.new_context()
    watchers: list[SocketWatch] = []
    sockets = contextlib.ExitStack()
    try:
        index = context.new_page()
        index.goto(f"{daphne.url}/")  # the anonymous session every client below shares
        index.wait_for_function("() => window.jobstream !== undefined")
        cookies = {cookie["name"]: cookie["value"] for cookie in context.cookies()}
        sessionid, csrf = cookies["sessionid"], cookies["csrftoken"]
        client = httpx.Client(cookies={"sessionid": sessionid, "csrftoken": csrf}, timeout=30)

        owner = SocketWatch("owner socket", opened(sockets, open_socket(daphne, "/ws/jobs/", sessionid)))
        owner.start()
        watchers.append(owner)
        started = [submit(client, daphne, csrf, LONG_JOB) for _ in range(2)] + [
            submit(client, daphne, csrf, ENDING_JOB)
        ]
        assert [s.status for s in started] == [201, 201, 201], started
        long_ids = [s.job_id for s in started[:2] if s.job_id]
        ending = started[2].job_id
        assert ending is not None
        for job_id in [*long_ids, ending]:
            watchers.append(
                SocketWatch(f"job socket {job_id[:8]}", open_socket(daphne, f"/ws/jobs/{job_id}/", sessionid))
            )
            watchers[-1].start()
        detail = context.new_page()
        detail.goto(f"{daphne.url}/jobs/{ending}/")
        pages = [PageWatch("index page", index), PageWatch("detail page", detail)]

        ending_watchers = [owner, watchers[-1]]

        def all_watch_running() -> bool:
            sockets = all(w.state(ending) == "running" for w in ending_watchers)
            return sockets and all(p.state(ending) == "running" for p in pages)

        assert wait_until(all_watch_running, timeout=WATCH_TIMEOUT, interval=0.05), "not every watcher saw it run"

        def near_its_end() -> bool:
            progress = owner.latest[ending].get("progress") or {}
            return float(progress.get("current") or 0) >= ENDING_JOB["steps"] - ENDING_STEPS_LEFT

        assert wait_until(near_its_end, timeout=WATCH_TIMEOUT, interval=0.02)
        assert all(job_state(job_id) == "running" for job_id in long_ids)

        # --- the failover ---
        killed = sentinels.kill_master()
        killed_wall = time.time()
        during = [submit(client, daphne, csrf, SUBMITTED_JOB)]
        promotion: list[float] = []
        waiter = threading.Thread(target=lambda: promotion.append(sentinels.wait_promotion()), daemon=True)
        waiter.start()
        while waiter.is_alive() and time.monotonic() - killed < 1.0:
            waiter.join(0.05)
        if not promotion:
            during.append(submit(client, daphne, csrf, SUBMITTED_JOB))
        waiter.join(timeout=40)
        assert promotion, f"no promotion:\n{sentinels.tails()}"
        promoted = promotion[0]

        for answer in during:
            assert answer.status in (201, 503), answer
            if answer.status == 503:
                assert answer.retry_after and answer.retry_after.isdigit(), answer

        # A socket opened after the promotion joins its groups on the new master and goes live.
        late = SocketWatch(
            "socket opened after the promotion",
            opened(sockets, open_socket(daphne, f"/ws/jobs/{long_ids[0]}/", sessionid)),
        )
        watchers.append(late.start())

        # --- the job that ended during the failover, on every socket and page ---
        shown: dict[str, float] = {}

        def converged() -> bool:
            truth = job_state(ending)
            if truth not in TERMINAL:
                return False
            for watch in ending_watchers:
                if watch.name not in shown and watch.state(ending) == truth:
                    shown[watch.name] = watch.shown_at(ending, truth) or time.monotonic()
            for page in pages:
                if page.name not in shown and page.state(ending) == truth:
                    shown[page.name] = time.monotonic()
            return len(shown) == len(ending_watchers) + len(pages)

        wait_until(converged, timeout=promoted - time.monotonic() + CONVERGE_AFTER_PROMOTION + 5, interval=0.05)
        truth = Job.objects.get(pk=ending)
        assert truth.state == "succeeded", (truth.state, truth.error)
        assert truth.finished_at is not None
        ended_after_kill = truth.finished_at.timestamp() - killed_wall
        assert ended_after_kill > 0, f"the job ended {-ended_after_kill:.2f} s before the kill: nothing was at risk"
        missing = {w.name for w in ending_watchers} | {p.name for p in pages}
        assert not missing - set(shown), f"never showed {truth.state}: {missing - set(shown)}"
        last = max(shown.values())

        # --- health: every check passes again (the worker's through the broker) ---
        health: list[int] = []
        failing: dict[str, float] = {}  # check -> when last seen failing

        def healthy() -> bool:
            response = client.get(f"{daphne.url}/healthz")
            health.append(response.status_code)
            if response.status_code == 503:
                failing.update(dict.fromkeys(response.json()["failed"], time.monotonic() - killed))
            return health[-1] == 200

        healthy_again = wait_until(healthy, timeout=promoted - time.monotonic() + SETTLE_AFTER_PROMOTION, interval=0.2)
        healthy_at = time.monotonic()

        # --- no job lost or stuck ---
        submitted = [s.job_id for s in during if s.job_id]
        every = [*long_ids, ending, *submitted]

        def all_ended() -> bool:
            return all(job_state(job_id) in TERMINAL for job_id in every)

        all_done = wait_until(all_ended, timeout=promoted - time.monotonic() + SETTLE_AFTER_PROMOTION, interval=0.2)
        settled = time.monotonic()
        states = {job_id: job_state(job_id) for job_id in every}
        submitted_ended: list[float | None] = []
        for answer in during:
            end = Job.objects.get(pk=answer.job_id).finished_at if answer.job_id else None
            submitted_ended.append(end.timestamp() - killed_wall if end is not None else None)

        print(
            "\nSentinel failover timeline (seconds from the kill):"
            f"\n  promotion (first sentinel names the replica): {promoted - killed:.2f}"
            f"\n  the ending job finished: {ended_after_kill:.2f} (in the database)"
            + "".join(f"\n  {name} showed it {truth.state}: {at - killed:.2f}" for name, at in sorted(shown.items()))
            + f"\n  last socket/page converged: {last - killed:.2f} ({last - promoted:.2f} after the promotion)"
            + "".join(
                f"\n  submit during the failover: {s.status}"
                f"{' Retry-After ' + str(s.retry_after) if s.retry_after else ''} in {s.seconds:.2f} s"
                + (f", its job ended at {end:.2f}" if end is not None else "")
                for s, end in zip(during, submitted_ended, strict=True)
            )
            + f"\n  /healthz 200 again: {healthy_at - killed:.2f}"
            + ("" if healthy_again else f" (NOT: {health[-3:]})")
            + "".join(f"\n    {check} failing until {at:.2f}" for check, at in failing.items())
            + f"\n  every job ended: {settled - killed:.2f}"
            + ("" if all_done else " (NOT within the bound)")
        )
        assert healthy_again, f"/healthz still {health[-1]} {SETTLE_AFTER_PROMOTION:.0f} s after the promotion"
        assert 500 not in health, health
        assert all_done, f"jobs lost or stuck {SETTLE_AFTER_PROMOTION:.0f} s after the promotion: {states}"
        assert all(states[job_id] == "succeeded" for job_id in long_ids), states
        assert all(state == "succeeded" for state in states.values()), states
        assert last - promoted <= CONVERGE_AFTER_PROMOTION, f"converged {last - promoted:.2f} s after the promotion"
        followed = [(watch, job_id) for watch in watchers for job_id in long_ids if job_id in watch.states]

        def long_jobs_shown() -> bool:
            return all(watch.state(job_id) == "succeeded" for watch, job_id in followed)

        assert late.state(long_ids[0]) is not None, "the socket opened after the promotion got nothing"
        # The long jobs' end, after the failover, reached every socket that follows them.
        assert wait_until(long_jobs_shown, timeout=5), [(w.name, w.state(j)) for w, j in followed]
    finally:
        for watch in watchers:
            watch.stop.set()
        sockets.close()
        context.close()
