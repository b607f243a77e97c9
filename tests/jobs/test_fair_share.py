"""Fair share with real processes: one owner queues more long jobs than there are worker
slots, and another owner's short job still starts at once.

daphne and a Celery worker (threads pool, 4 slots, so JOB_QUOTA_RUNNING is 2) on the test
database and a Redis of their own; no beat, so every held job that starts was sent by the
end of one of its owner's jobs, not by a sweep. Two visitors (two cookies) submit over
HTTP; a thread samples owner A's running count from the database all along.

The issue's shape is 10 jobs of 20 s: at 2 at a time that is 100 s of test. Here A's jobs
last 8 s: still well past the 5 s in which B's job must start (without fair share, A's
first four jobs hold every slot for 8 s), and A's ten end in about 40 s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from core.redis_local import RedisProcess, start_redis
from jobs.models import Job, JobState
from tests.live_daphne import DaphneProcess, session_owner_token, start_celery_worker
from tests.processes import stop_process
from tests.waiting import wait_until

SLOTS = 4
LIMIT = SLOTS // 2  # JOB_QUOTA_RUNNING's default
A_JOBS = 10
A_JOB = {"kind": "sleep", "params": {"steps": 16, "step_seconds": 0.5}}  # 8 s
B_JOB = {"kind": "sleep", "params": {"steps": 2, "step_seconds": 0.5}}  # 1 s
B_STARTS_WITHIN = 5.0  # seconds from B's submit (the issue)
START_TIMEOUT = 60.0  # seconds for daphne and the worker to be ready on a busy machine
A_DONE_TIMEOUT = 150.0  # seconds for A's ten jobs, about 40 s of work at two at a time
SAMPLE_INTERVAL = 0.05  # seconds between samples of A's running count


@pytest.fixture
def stack(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[DaphneProcess]:
    redis: RedisProcess = start_redis()
    env = {**live_server_env, "REDIS_URL": redis.url, "LOG_LEVEL": "INFO"}
    env.pop("JOB_QUOTA_RUNNING", None)  # the default, from the worker's slots
    daphne = DaphneProcess(env={**env, "CELERY_WORKER_CONCURRENCY": str(SLOTS)}, log=tmp_path / "daphne.log")
    worker = start_celery_worker(env=env, log=tmp_path / "worker.log", pool="threads", concurrency=SLOTS)
    try:
        daphne.start()
        ready = wait_until(lambda: " ready." in (tmp_path / "worker.log").read_text(errors="replace"), timeout=60)
        assert ready, f"the worker did not start:\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
        yield daphne
    finally:
        stop_process(worker)
        daphne.stop()
        redis.stop()


class Visitor:
    """A browser session: its own cookies, so its own anonymous owner."""

    def __init__(self, daphne: DaphneProcess) -> None:
        self.http = httpx.Client(base_url=daphne.url, timeout=10)
        assert self.http.get("/").status_code == 200
        self.token = session_owner_token(sessionid=self.http.cookies["sessionid"], env=daphne.env)

    def submit(self, body: dict[str, Any]) -> str:
        response = self.http.post("/api/jobs/", json=body, headers={"X-CSRFToken": self.http.cookies["csrftoken"]})
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
        return job_id


class RunningSampler(threading.Thread):
    """Reads how many of one owner's jobs are running, every SAMPLE_INTERVAL, until stopped."""

    def __init__(self, owner_token: str) -> None:
        super().__init__(daemon=True)
        self.owner_token = owner_token
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                running = Job.objects.filter(owner_token=self.owner_token, state=JobState.RUNNING).count()
                self.samples.append(running)
                self.stopped.wait(SAMPLE_INTERVAL)
        finally:
            connection.close()


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an end at the instant of a start comes first)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_one_owner_queueing_ten_long_jobs_runs_two_at_a_time_and_another_owners_job_starts_at_once(
    stack: DaphneProcess,
) -> None:
    a, b = Visitor(stack), Visitor(stack)
    sampler = RunningSampler(a.token)
    sampler.start()
    try:
        a_ids = [a.submit(A_JOB) for _ in range(A_JOBS)]
        b_id = b.submit(B_JOB)

        assert wait_until(lambda: Job.objects.get(pk=b_id).started_at is not None, timeout=60), stack.log.read_text()
        b_job = Job.objects.get(pk=b_id)
        assert b_job.started_at is not None
        b_waited = (b_job.started_at - b_job.created_at).total_seconds()

        def a_done() -> bool:
            return not Job.objects.filter(pk__in=a_ids, state__in=(JobState.QUEUED, JobState.RUNNING)).exists()

        assert wait_until(a_done, timeout=A_DONE_TIMEOUT, interval=0.5), "owner A's jobs did not all end"
    finally:
        sampler.stopped.set()
        sampler.join(timeout=10)

    a_jobs = sorted(Job.objects.filter(pk__in=a_ids), key=lambda job: (job.created_at, str(job.pk)))
    assert [job.state for job in a_jobs] == [JobState.SUCCEEDED] * A_JOBS, [(j.state, j.error) for j in a_jobs]
    assert all(job.attempts == 1 for job in a_jobs)
    intervals = [(job.started_at, job.finished_at) for job in a_jobs if job.started_at and job.finished_at]
    assert len(intervals) == A_JOBS
    # In submission order: each after every job submitted LIMIT or more places before it
    # (the LIMIT jobs that may start at once, like the first two, race each other).
    starts = [start for start, _ in intervals]
    out_of_turn = [i for i in range(LIMIT, A_JOBS) if starts[i] < max(starts[: i - LIMIT + 1])]
    assert not out_of_turn, f"A's jobs {out_of_turn} started before one submitted {LIMIT} or more places earlier"
    overlap = most_at_once(intervals)
    sampled = max(sampler.samples)
    a_span = (max(end for _, end in intervals) - min(start for start, _ in intervals)).total_seconds()
    order = sorted(range(A_JOBS), key=lambda i: starts[i])
    print(
        f"B started {b_waited:.2f} s after its submit; A ran at most {sampled} at once in {len(sampler.samples)} "
        f"samples ({overlap} by the rows' start and end times); A's ten took {a_span:.1f} s, started in the "
        f"order {[i + 1 for i in order]}"
    )
    assert b_waited < B_STARTS_WITHIN
    assert b_job.started_at < min(end for _, end in intervals), "B's job waited for one of A's to end"
    assert sampled <= LIMIT and overlap <= LIMIT
    assert overlap == LIMIT  # and A did use both of its places
    assert Job.objects.get(pk=b_id).state == JobState.SUCCEEDED
