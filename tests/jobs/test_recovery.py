"""Faults really caused: a worker killed mid-job (its pool child, or all of it), a job
whose worker is lost once too often, the broker down when a job is submitted, Redis
restarting under a running job, and the broker losing a job's message when it restarts.

Each test runs a small stack of real processes on the test database: a Redis of its
own (stopping it never touches the session's), daphne, a prefork Celery worker with
one child, and Celery beat sending `jobs.sweep` every second. Heartbeats and the
staleness limit are shortened through the environment, as an operator would, so a
lost worker is noticed in seconds instead of half a minute. A websocket watcher
follows each job through the fault and checks what a page would have shown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest
from redis import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from core.daphne_limits import daphne_command
from core.redis_local import RedisProcess, free_port, start_redis
from jobs.models import Job, JobState
from jobs.services import lost_worker_error
from tests.conftest import ROOT
from tests.waiting import wait_until

RECOVERY_ENV = {
    "JOB_HEARTBEAT_INTERVAL": "0.5",
    "JOB_STALE_AFTER": "5",  # 10 heartbeats: a busy machine never makes a live job look lost
    "JOB_SWEEP_INTERVAL": "1",
    "JOB_REQUEUE_AFTER": "2",  # a sent job waiting 2 s is looked for in the broker
}
START_TIMEOUT = 60.0  # seconds for daphne, a worker and beat to be ready on a busy machine
RECOVERY_TIMEOUT = 60.0  # issue 5: a job whose worker died is terminal within 60 s
RUNNING_TIMEOUT = 30.0  # seconds for a submitted job to be running with some progress
STOP_TIMEOUT = 10.0  # seconds for a process to exit on SIGTERM before it is killed
STEPS = 24
SLEEP_JOB = {"kind": "sleep", "params": {"steps": STEPS, "step_seconds": 0.25}}  # 6 s, 4 reports a second
TERMINAL = {"succeeded", "failed", "cancelled"}


# --- the stack -------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    workdir: Path
    redis: RedisProcess
    web_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-2500:]}" for name in self.processes)

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_web(self) -> None:
        port = free_port()
        self.web_url = f"http://127.0.0.1:{port}"
        self.spawn("web", daphne_command("core.asgi:application", port=port))

    def start_worker(self, name: str, *, pool: str = "prefork", concurrency: int = 1) -> subprocess.Popen[bytes]:
        celery = str(Path(sys.executable).parent / "celery")
        command = [celery, "-A", "celery_app", "worker", "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h"]
        command += ["-l", "INFO"]
        return self.spawn(name, command)

    def start_beat(self) -> None:
        celery = str(Path(sys.executable).parent / "celery")
        schedule = str(self.workdir / "beat-schedule")
        self.spawn("beat", [celery, "-A", "celery_app", "beat", "-l", "INFO", "--schedule", schedule])

    def wait_ready(self, *names: str) -> None:
        pending = set(names)

        def ready() -> bool:
            for name in names:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{self.log(name)[-3000:]}")
            pending.difference_update({name for name in pending if self._ready(name)})
            return not pending

        if not wait_until(ready, timeout=START_TIMEOUT, interval=0.1):
            raise RuntimeError(f"{', '.join(names)} not ready within {START_TIMEOUT:.0f} s:\n{self.logs()}")

    def _ready(self, name: str) -> bool:
        if name == "web":
            try:
                return httpx.get(f"{self.web_url}/api/job-kinds/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        if name == "beat":
            return "beat: Starting..." in self.log(name)
        return " ready." in self.log(name)  # "<name>@<host> ready.": the worker consumes

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()  # all at once, so they stop in parallel
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.redis.stop()


@pytest.fixture
def make_stack(
    live_server_env: dict[str, str], transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """Starts web + worker `w1` + beat (web alone with `with_workers=False`) on a Redis of
    their own; extra env as keywords."""
    stacks: list[Stack] = []

    def make(*, with_workers: bool = True, **extra_env: str) -> Stack:
        redis = start_redis()
        env = {**live_server_env, **RECOVERY_ENV, **extra_env, "REDIS_URL": redis.url, "LOG_LEVEL": "INFO"}
        stack = Stack(env=env, workdir=tmp_path, redis=redis)
        stacks.append(stack)
        stack.start_web()
        if not with_workers:
            stack.wait_ready("web")
            return stack
        stack.start_worker("w1")
        stack.start_beat()
        stack.wait_ready("web", "w1", "beat")
        return stack

    yield make
    for stack in stacks:
        stack.stop()


# --- a visitor -------------------------------------------------------------------


class Visitor:
    """A browser session on the stack's daphne: posts jobs, watches them over a socket."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.client = httpx.Client(base_url=web_url, timeout=10)
        assert self.client.get("/").status_code == 200  # creates the session and the CSRF cookie

    def submit(self) -> httpx.Response:
        return self.client.post("/api/jobs/", json=SLEEP_JOB, headers={"X-CSRFToken": self.client.cookies["csrftoken"]})

    def watch(self, job_id: str) -> Watcher:
        watcher = Watcher(self.web_url.replace("http://", "ws://") + f"/ws/jobs/{job_id}/", self)
        watcher.start()
        assert watcher.opened.wait(10), f"the job socket did not open: {watcher.error!r}"
        return watcher

    def close(self) -> None:
        self.client.close()


class Watcher(threading.Thread):
    """Reads a single-job socket until the server closes it after the terminal frame."""

    def __init__(self, url: str, visitor: Visitor) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.visitor = visitor
        self.jobs: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(
                self.url,
                origin=Origin(self.visitor.web_url),
                additional_headers={"Cookie": f"sessionid={self.visitor.client.cookies['sessionid']}"},
                proxy=None,
                open_timeout=10,
            ) as socket:
                self.opened.set()
                while True:
                    frame = json.loads(socket.recv(timeout=RECOVERY_TIMEOUT))
                    if frame["type"] == "job":
                        self.jobs.append(frame["job"])
        except ConnectionClosed:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.opened.set()

    def result(self) -> list[dict[str, Any]]:
        self.join(timeout=RECOVERY_TIMEOUT)
        assert not self.is_alive(), "the job socket did not close after the terminal frame"
        assert self.error is None, f"the job socket failed: {self.error!r}"
        return self.jobs


def assert_seq_only_rises(jobs: list[dict[str, Any]]) -> None:
    seqs = [job["seq"] for job in jobs]
    assert seqs == sorted(set(seqs)), f"seq went back or repeated: {seqs}"


def messages(jobs: list[dict[str, Any]]) -> list[str]:
    return [job["progress"]["message"] for job in jobs if job["progress"]]


# --- waiting on the database -----------------------------------------------------


def row(job_id: str) -> Job:
    return Job.objects.get(pk=job_id)


def wait_running_with_progress(job_id: str, stack: Stack, *, at_least: int = 3) -> None:
    def running() -> bool:
        job = row(job_id)
        return job.state == JobState.RUNNING and (job.progress_current or 0) >= at_least

    assert wait_until(running, timeout=RUNNING_TIMEOUT, interval=0.05), f"{row(job_id)}\n{stack.logs()}"


def wait_terminal(job_id: str, stack: Stack) -> float:
    """Seconds until the job is terminal, at most RECOVERY_TIMEOUT."""
    started = time.monotonic()
    assert wait_until(lambda: row(job_id).is_terminal, timeout=RECOVERY_TIMEOUT, interval=0.1), (
        f"still {row(job_id).state} {RECOVERY_TIMEOUT:.0f} s after the fault\n{stack.logs()}"
    )
    return time.monotonic() - started


def pool_children(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(worker.pid).children()
    assert children, "the prefork worker has no pool child"
    return children


def kill(process: psutil.Process) -> None:
    os.kill(process.pid, signal.SIGKILL)

    def dead() -> bool:  # a zombie is dead: only its parent (maybe gone too) has to reap it
        try:
            return bool(process.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    assert wait_until(dead, timeout=STOP_TIMEOUT), f"pid {process.pid} survived SIGKILL"


# --- a worker killed mid-job -------------------------------------------------------


def test_job_whose_pool_child_is_killed_runs_again_and_succeeds(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    visitor = Visitor(stack.web_url)
    try:
        job_id = visitor.submit().json()["id"]
        watcher = visitor.watch(job_id)
        wait_running_with_progress(job_id, stack)

        (child,) = pool_children(stack.processes["w1"])
        kill(child)  # the parent lives: Celery hands the unacknowledged task back at once
        recovery = wait_terminal(job_id, stack)

        job = row(job_id)
        assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 2, {"steps": STEPS, "seconds": 6.0})
        seen = watcher.result()
    finally:
        visitor.close()
    assert_seq_only_rises(seen)
    assert [job["state"] for job in seen].count("queued") <= 1  # handed back at once, never swept
    restarted = messages(seen).index("Restarted after its worker was lost (attempt 2 of 3)")
    before, after = [j for j in seen if j["progress"]][:restarted], [j for j in seen if j["progress"]][restarted:]
    assert max(j["progress"]["current"] for j in before) >= 3
    assert after[0]["progress"]["current"] == 0 and after[0]["state"] == "running"  # the bar visibly restarts
    assert seen[-1]["state"] == "succeeded"
    print(f"pool child killed: terminal {recovery:.1f} s later (a {STEPS * 0.25:.0f} s job run again)")


def test_job_whose_whole_worker_is_killed_is_swept_and_runs_on_another_worker(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    visitor = Visitor(stack.web_url)
    try:
        job_id = visitor.submit().json()["id"]
        watcher = visitor.watch(job_id)
        wait_running_with_progress(job_id, stack)

        parent = psutil.Process(stack.processes["w1"].pid)
        children = pool_children(stack.processes["w1"])
        killed_at = time.monotonic()
        kill(parent)  # first, so it cannot hand the task back: it stays unacknowledged
        for child in children:
            kill(child)
        # Nothing redelivers the task before visibility_timeout (hours): the sweeper must
        # notice the silence, queue the job again and send it to a worker that is alive.
        stack.start_worker("w2")
        stack.wait_ready("w2")
        assert wait_until(lambda: row(job_id).attempts == 2, timeout=RECOVERY_TIMEOUT, interval=0.1), stack.logs()
        rerun_after = time.monotonic() - killed_at
        wait_terminal(job_id, stack)
        terminal_after = time.monotonic() - killed_at

        job = row(job_id)
        assert (job.state, job.attempts) == (JobState.SUCCEEDED, 2)
        assert terminal_after < RECOVERY_TIMEOUT
        seen = watcher.result()
    finally:
        visitor.close()
    assert_seq_only_rises(seen)
    states = [job["state"] for job in seen]
    requeued = states.index("queued", states.index("running"))  # running → queued again → running
    requeued_message = "Its worker stopped responding; waiting to run again (attempt 2 of 3)"
    assert seen[requeued]["progress"]["message"] == requeued_message
    assert seen[requeued]["progress"]["current"] == 0
    assert "running" in states[requeued:] and seen[-1]["state"] == "succeeded"
    assert "Restarted after its worker was lost (attempt 2 of 3)" in messages(seen[requeued:])
    print(f"whole worker killed: running again after {rerun_after:.1f} s, terminal after {terminal_after:.1f} s")


def test_job_whose_worker_is_lost_once_too_often_fails_with_a_clear_error(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(JOB_MAX_ATTEMPTS="1")
    visitor = Visitor(stack.web_url)
    try:
        job_id = visitor.submit().json()["id"]
        watcher = visitor.watch(job_id)
        wait_running_with_progress(job_id, stack)

        (child,) = pool_children(stack.processes["w1"])
        kill(child)
        recovery = wait_terminal(job_id, stack)

        job = row(job_id)
        assert (job.state, job.attempts) == (JobState.FAILED, 1)
        assert job.error == lost_worker_error(1) == "The worker running this job was lost once; giving up."
        answer = visitor.client.get(f"/api/jobs/{job_id}/").json()
        assert (answer["state"], answer["error"]) == ("failed", lost_worker_error(1))
        seen = watcher.result()
    finally:
        visitor.close()
    assert_seq_only_rises(seen)
    assert (seen[-1]["state"], seen[-1]["error"]) == ("failed", lost_worker_error(1))
    print(f"attempts exhausted: failed {recovery:.1f} s after the kill")


# --- the broker down at submit -----------------------------------------------------------


def test_job_submitted_while_the_broker_is_down_is_saved_answered_and_run_once_it_is_back(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    visitor = Visitor(stack.web_url)
    try:
        port = stack.redis.port
        stack.redis.stop()

        started = time.monotonic()
        response = visitor.submit()
        answered_in = time.monotonic() - started
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert response.json()["state"] == "queued"
        assert answered_in < 3.0, f"the submit took {answered_in:.1f} s with the broker down"
        assert row(job_id).dispatched_at is None  # saved, not sent: the sweeper's to send

        stack.redis = start_redis(port=port)  # the same address: every process reconnects
        back_at = time.monotonic()
        assert wait_until(lambda: row(job_id).state != JobState.QUEUED, timeout=RECOVERY_TIMEOUT, interval=0.1)
        started_after = time.monotonic() - back_at
        recovery = wait_terminal(job_id, stack)
        job = row(job_id)
        assert (job.state, job.attempts) == (JobState.SUCCEEDED, 1)
        assert job.dispatched_at is not None
        assert "dispatch to the broker failed" in stack.log("web")
    finally:
        visitor.close()
    print(
        f"broker down at submit: 201 in {answered_in * 1000:.0f} ms; "
        f"running {started_after:.1f} s after Redis was back, done {recovery:.1f} s later"
    )
    assert time.monotonic() - back_at < RECOVERY_TIMEOUT


def test_worker_survives_a_redis_restart_with_a_job_running_and_takes_new_jobs_after_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(with_workers=False)
    stack.start_worker("w1", pool="threads", concurrency=4)  # kombu's bug shows with a thread pool (bench/soak.py)
    stack.start_beat()
    stack.wait_ready("w1", "beat")
    visitor = Visitor(stack.web_url)
    try:
        response = visitor.submit()
        assert response.status_code == 201, response.text
        running_id = response.json()["id"]
        wait_running_with_progress(running_id, stack)

        port = stack.redis.port
        stack.redis.stop()  # the worker loses its broker channel with a task unacknowledged
        assert wait_until(lambda: "Cannot connect to redis" in stack.log("w1"), timeout=RUNNING_TIMEOUT), stack.logs()
        stack.redis = start_redis(port=port)
        back_at = time.monotonic()

        wait_terminal(running_id, stack)  # it ran on through the restart and acknowledged on a dead channel
        assert row(running_id).state == JobState.SUCCEEDED
        assert stack.processes["w1"].poll() is None, f"the worker exited:\n{stack.log('w1')[-3000:]}"
        assert "Unrecoverable error" not in stack.log("w1")
        assert "skipped on the closed channel" in stack.log("w1"), stack.log("w1")[-3000:]

        response = visitor.submit()
        assert response.status_code == 201, response.text
        after_id = response.json()["id"]
        wait_terminal(after_id, stack)
        job = row(after_id)
        assert (job.state, job.attempts) == (JobState.SUCCEEDED, 1)
        assert stack.processes["w1"].poll() is None, f"the worker exited:\n{stack.log('w1')[-3000:]}"
    finally:
        visitor.close()
    done_after = time.monotonic() - back_at
    print(f"Redis restarted under a running job: the worker lived on; a new job done {done_after:.1f} s later")


# --- the broker losing a message -------------------------------------------------


def queued_task_ids(redis_url: str) -> list[str]:
    """The task ids of the messages waiting in the default queue."""
    client = Redis.from_url(redis_url)
    try:
        messages = cast("list[bytes]", client.lrange("celery", 0, -1))
        return [json.loads(raw)["headers"]["id"] for raw in messages]
    finally:
        client.close()


def test_job_whose_message_the_broker_lost_in_a_restart_is_sent_again_and_runs(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(with_workers=False)  # no worker yet: the message waits in the queue
    visitor = Visitor(stack.web_url)
    try:
        response = visitor.submit()
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert wait_until(lambda: row(job_id).dispatched_at is not None, timeout=10), stack.logs()
        first_sent = row(job_id).dispatched_at
        assert queued_task_ids(stack.redis.url) == [job_id]  # the broker took it ...

        port = stack.redis.port
        stack.redis.stop()
        stack.redis = start_redis(port=port)  # ... and, with no persistence, lost it
        assert queued_task_ids(stack.redis.url) == []
        back_at = time.monotonic()
        stack.start_worker("w1")
        stack.start_beat()
        stack.wait_ready("w1", "beat")
        assert wait_until(lambda: row(job_id).state != JobState.QUEUED, timeout=RECOVERY_TIMEOUT, interval=0.1), (
            stack.logs()
        )
        started_after = time.monotonic() - back_at
        wait_terminal(job_id, stack)
        done_after = time.monotonic() - back_at

        job = row(job_id)
        assert (job.state, job.attempts) == (JobState.SUCCEEDED, 1)
        assert job.dispatched_at is not None and first_sent is not None and job.dispatched_at > first_sent
        resent = [line for line in stack.log("w1").splitlines() if "the broker lost its task message" in line]
        assert len(resent) == 1 and f"job {job_id} (kind sleep)" in resent[0], resent
        # one message, taken and run once (rows other tests left in the shared database may
        # be re-sent by the same sweep, so only this job's messages count)
        assert job_id not in queued_task_ids(stack.redis.url)
    finally:
        visitor.close()
    print(
        f"message lost in a broker restart: running {started_after:.1f} s after Redis was back, done {done_after:.1f} s"
    )
