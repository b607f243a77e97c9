"""Scale-out: two daphne processes and two Celery worker processes share the same job
and owner groups through Redis.

Four real subprocesses share the test database and the test Redis. Jobs are posted
through both daphnes alternately; each daphne holds an owner socket of the same
session, and daphne B follows jobs created through daphne A on single-job sockets.
Which worker ran a job comes from the workers' own logs (`Task jobs.run_job[<id>]
succeeded`, the task id being the job id): the product records no worker name.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core.daphne_limits import daphne_command
from core.redis_local import RedisProcess, free_port
from tests.conftest import ROOT
from tests.processes import stop_process
from tests.waiting import async_wait_until, wait_until

WORKERS = ("w1", "w2")
JOBS = 6
JOB_PARAMS = {"steps": 5, "step_seconds": 0.1}  # 0.5 s a job: long enough to be watched live
START_TIMEOUT = 40.0  # seconds for both daphnes and both workers to answer
FRAME_TIMEOUT = 15.0  # seconds for the next frame on any socket
RUN_TIMEOUT = 30.0  # seconds for every job to reach its terminal state on every socket
# The session's in-process worker (celery_worker_thread, started by other tests) consumes
# the broker queue in Redis database 0; these four processes use database 1, so only
# w1 and w2 can take these jobs. (Pub/sub, which the channel layer uses, spans databases.)
REDIS_DB = 1
TERMINAL = {"succeeded", "failed", "cancelled"}
SUCCEEDED_LINE = re.compile(r"Task jobs\.run_job\[([0-9a-f-]{36})\] succeeded")


# --- the four processes ----------------------------------------------------------


@dataclass
class Cluster:
    web_urls: list[str]
    worker_logs: dict[str, Path]

    def jobs_run_by(self, worker: str) -> set[str]:
        return set(SUCCEEDED_LINE.findall(self.worker_logs[worker].read_text(errors="replace")))


def workers_answering_ping(celery: str, env: dict[str, str]) -> set[str]:
    """Names (before the @) of the workers that answer `celery inspect ping`."""
    ping = subprocess.run(
        [celery, "-A", "celery_app", "inspect", "ping", "--timeout", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return set(re.findall(r"->\s+([\w.-]+)@\S+: OK", ping.stdout))


@pytest.fixture
def cluster(
    live_server_env: dict[str, str], redis_server: RedisProcess, transactional_db: None, tmp_path: Path
) -> Iterator[Cluster]:
    """daphne A and B, workers w1 and w2: one test database, one Redis."""
    env = {**live_server_env, "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}", "LOG_LEVEL": "INFO"}
    # A job held for its owner's line logs a task that ended too: "ran once" counts those lines.
    env["JOB_QUOTA_RUNNING"] = "0"
    celery = str(Path(sys.executable).parent / "celery")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}

    def spawn(name: str, command: list[str]) -> None:
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as out:
            processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    web_urls: list[str] = []
    try:
        for name in ("daphne-a", "daphne-b"):
            port = free_port()
            web_urls.append(f"http://127.0.0.1:{port}")
            spawn(name, daphne_command("core.asgi:application", port=port))
        for name in WORKERS:
            spawn(name, [celery, "-A", "celery_app", "worker", "-P", "solo", "-n", f"{name}@%h", "-E", "-l", "INFO"])

        pending_web = set(web_urls)

        def all_answer() -> bool:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{logs[name].read_text(errors='replace')[-3000:]}")
            for url in list(pending_web):
                try:
                    if httpx.get(f"{url}/api/job-kinds/", timeout=2).status_code == 200:
                        pending_web.discard(url)
                except httpx.HTTPError:
                    pass
            # "<name>@<host> ready." is logged once the worker consumes; reading the log is
            # cheap, so the ping (which must answer too) runs only after both say so.
            if pending_web or not all(" ready." in logs[name].read_text(errors="replace") for name in WORKERS):
                return False
            return workers_answering_ping(celery, env) == set(WORKERS)

        if not wait_until(all_answer, timeout=START_TIMEOUT, interval=0.2):
            tails = "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-1500:]}" for name, path in logs.items())
            raise RuntimeError(f"2 daphnes + 2 workers did not answer within {START_TIMEOUT:.0f} s:\n{tails}")
        yield Cluster(web_urls=web_urls, worker_logs={name: logs[name] for name in WORKERS})
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()  # all at once, so they stop in parallel
        for process in processes.values():
            stop_process(process)


# --- clients ---------------------------------------------------------------------


@dataclass
class SocketRecord:
    """The jobs one socket received, by job id, in arrival order."""

    frames: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    close_code: int | None = None

    def terminal_ids(self) -> set[str]:
        return {job_id for job_id, jobs in self.frames.items() if jobs[-1]["state"] in TERMINAL}


def open_socket(web_url: str, path: str, sessionid: str) -> Any:
    return connect(
        f"{web_url.replace('http://', 'ws://')}{path}",
        origin=web_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={sessionid}"},
        open_timeout=FRAME_TIMEOUT,
    )


async def next_frame(socket: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT))
    return frame


async def follow_owner(socket: ClientConnection, record: SocketRecord) -> None:
    """Reads job frames until JOBS distinct jobs have reached a terminal state."""
    while len(record.terminal_ids()) < JOBS:
        frame = await next_frame(socket)
        if frame["type"] == "job":
            record.frames.setdefault(frame["job"]["id"], []).append(frame["job"])


async def follow_job(web_url: str, job_id: str, sessionid: str) -> SocketRecord:
    """Reads a single-job socket to its terminal frame and the close after it."""
    record = SocketRecord()
    async with open_socket(web_url, f"/ws/jobs/{job_id}/", sessionid) as socket:
        while job_id not in record.terminal_ids():
            frame = await next_frame(socket)
            if frame["type"] == "log":  # the job's log lines, between its frames
                continue
            assert frame["type"] == "job", frame
            record.frames.setdefault(job_id, []).append(frame["job"])
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT)
        record.close_code = socket.close_code
    return record


def assert_seq_increases(record: SocketRecord) -> None:
    for job_id, jobs in record.frames.items():
        seqs = [job["seq"] for job in jobs]
        assert seqs == sorted(set(seqs)), f"job {job_id}: seq not strictly increasing: {seqs}"


# --- the test --------------------------------------------------------------------


async def test_two_daphnes_and_two_workers_share_job_and_owner_groups_through_redis(cluster: Cluster) -> None:
    web_a, web_b = cluster.web_urls
    async with httpx.AsyncClient(timeout=FRAME_TIMEOUT) as client:
        assert (await client.get(f"{web_a}/")).status_code == 200  # the session, valid on both daphnes
        sessionid, csrf = client.cookies["sessionid"], client.cookies["csrftoken"]
        owner_a, owner_b = SocketRecord(), SocketRecord()

        async with (
            open_socket(web_a, "/ws/jobs/", sessionid) as socket_a,
            open_socket(web_b, "/ws/jobs/", sessionid) as socket_b,
        ):
            assert (await next_frame(socket_a))["type"] == "snapshot"
            assert (await next_frame(socket_b))["type"] == "snapshot"
            owners = [asyncio.create_task(follow_owner(s, r)) for s, r in ((socket_a, owner_a), (socket_b, owner_b))]

            created: list[str] = []
            followers: dict[str, asyncio.Task[SocketRecord]] = {}
            for index in range(JOBS):
                via = web_a if index % 2 == 0 else web_b
                response = await client.post(
                    f"{via}/api/jobs/",
                    json={"kind": "sleep", "params": JOB_PARAMS},
                    headers={"X-CSRFToken": csrf},
                )
                assert response.status_code == 201, response.text
                job_id = response.json()["id"]
                created.append(job_id)
                if via == web_a:  # followed on the other daphne
                    followers[job_id] = asyncio.create_task(follow_job(web_b, job_id, sessionid))

            await asyncio.wait_for(asyncio.gather(*owners, *followers.values()), RUN_TIMEOUT)

    # Both owner sockets, on different daphnes, saw every job to its end, whichever
    # daphne took the POST and whichever worker ran it.
    for name, record in (("owner socket on daphne A", owner_a), ("owner socket on daphne B", owner_b)):
        assert record.terminal_ids() == set(created), name
        assert {jobs[-1]["state"] for jobs in record.frames.values()} == {"succeeded"}, name
        assert_seq_increases(record)

    # Daphne B streamed jobs created through daphne A to their terminal state, live.
    single = {job_id: task.result() for job_id, task in followers.items()}
    for job_id, record in single.items():
        assert record.frames[job_id][-1]["state"] == "succeeded"
        assert record.close_code == 1000
        assert_seq_increases(record)
    assert any(record.frames[job_id][0]["state"] not in TERMINAL for job_id, record in single.items()), (
        "every job had ended before its socket opened: no live frame crossed daphnes"
    )

    # Each job ran exactly once, and both workers ran some. The log line follows the
    # terminal frame by a moment, so wait for it.
    async def every_job_logged() -> bool:
        return sum(len(cluster.jobs_run_by(worker)) for worker in WORKERS) >= JOBS

    assert await async_wait_until(every_job_logged, timeout=FRAME_TIMEOUT, interval=0.1)
    ran = {worker: cluster.jobs_run_by(worker) for worker in WORKERS}
    assert ran["w1"] | ran["w2"] == set(created)
    assert not ran["w1"] & ran["w2"], f"a job ran on both workers: {ran['w1'] & ran['w2']}"
    assert ran["w1"] and ran["w2"], f"one worker ran every job: {ran}"
