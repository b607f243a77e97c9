"""A worker host's figures on WORKER_METRICS_PORT, with real processes: a daphne and a
Celery worker subprocess (threads, then prefork with PROMETHEUS_MULTIPROC_DIR) share the
test database and a Redis database of their own, so only this worker takes their jobs.
The frames the worker publishes reach its port, a prefork child's through the
multiprocess directory; the daphne's own /metrics shows the same job's run."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.redis_local import RedisProcess, free_port
from tests.live_daphne import DaphneProcess, start_celery_worker
from tests.processes import stop_process
from tests.scrapes import Scrape, scrape
from tests.waiting import wait_until

REDIS_DB = 2  # the session's in-process worker consumes database 0, test_scale_out's workers 1
START_TIMEOUT = 40.0  # seconds for the worker's port to answer
RUN_TIMEOUT = 30.0  # seconds for the jobs to end and their figures to show
JOBS = 3
STEPS = 10  # progress frames per job, at least


class Stack:
    def __init__(
        self, daphne: DaphneProcess, worker: subprocess.Popen[bytes], port: int, log: Path, *, pool: str
    ) -> None:
        self.pool = pool
        self.daphne = daphne
        self.worker = worker
        self.worker_url = f"http://127.0.0.1:{port}/metrics"
        self.worker_log = log

    def worker_scrape(self) -> Scrape:
        return scrape(self.worker_url, token=None)

    def run_jobs(self) -> list[str]:
        with httpx.Client(base_url=self.daphne.url, timeout=10) as client:
            assert client.get("/").status_code == 200
            ids = []
            for _ in range(JOBS):
                response = client.post(
                    "/api/jobs/",
                    json={"kind": "sleep", "params": {"steps": STEPS, "step_seconds": 0.02}},
                    headers={"X-CSRFToken": client.cookies["csrftoken"]},
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])

            def ended() -> bool:
                states = {client.get(f"/api/jobs/{job_id}/").json()["state"] for job_id in ids}
                return states == {"succeeded"}

            assert wait_until(ended, timeout=RUN_TIMEOUT, interval=0.2), self.worker_log.read_text()[-3000:]
        return ids


def worker_env(live_server_env: dict[str, str], redis_server: RedisProcess, port: int) -> dict[str, str]:
    return {
        **live_server_env,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        "WORKER_METRICS_PORT": str(port),
        "WORKER_METRICS_ADDRESS": "127.0.0.1",
        "JOB_QUOTA_RUNNING": "0",
        "PROGRESS_MAX_RATE": "1000",  # every step a frame
    }


@pytest.fixture(params=["threads", "prefork"])
def stack(
    request: pytest.FixtureRequest,
    live_server_env: dict[str, str],
    redis_server: RedisProcess,
    transactional_db: None,
    tmp_path: Path,
) -> Iterator[Stack]:
    port = free_port()
    env = worker_env(live_server_env, redis_server, port)
    if request.param == "prefork":
        (tmp_path / "prometheus").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    daphne = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    log = tmp_path / "worker.log"
    worker = start_celery_worker(env=env, log=log, pool=request.param, concurrency=2)
    try:
        daphne.start()
        stack = Stack(daphne, worker, port, log, pool=request.param)

        def answers() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{log.read_text()[-3000:]}")
            try:
                stack.worker_scrape()
            except httpx.HTTPError:
                return False
            return " ready." in log.read_text(errors="replace")

        assert wait_until(answers, timeout=START_TIMEOUT, interval=0.2), log.read_text()[-3000:]
        yield stack
    finally:
        stop_process(worker)
        daphne.stop()


def test_the_worker_port_shows_its_published_frames_and_daphne_the_runs(stack: Stack) -> None:
    before = stack.worker_scrape()
    if stack.pool == "threads":  # in-process figures: there from the start (prefork's once a child publishes)
        assert before.has("jobstream_frames_published_total")
    assert before.value("jobstream_publisher_backlog") == 0
    web_before = scrape(f"{stack.daphne.url}/metrics")
    stack.run_jobs()

    def published() -> bool:
        grown = stack.worker_scrape().value("jobstream_frames_published_total") - before.value(
            "jobstream_frames_published_total"
        )
        return grown >= JOBS * (STEPS + 2)  # each job's progress frames, its start and its end

    assert wait_until(published, timeout=RUN_TIMEOUT, interval=0.2), stack.worker_scrape().samples
    assert stack.worker_scrape().value("jobstream_publisher_backlog") == 0  # Redis took every write
    web_after = scrape(f"{stack.daphne.url}/metrics")
    runs = "jobstream_run_seconds_count"
    assert (
        web_after.value(runs, kind="sleep", state="succeeded") - web_before.value(runs, kind="sleep", state="succeeded")
        == JOBS
    )


def test_prefork_without_a_multiprocess_directory_stops_naming_it(
    live_server_env: dict[str, str], redis_server: RedisProcess, tmp_path: Path
) -> None:
    env = worker_env(live_server_env, redis_server, free_port())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "worker.log"
    worker = start_celery_worker(env=env, log=log, pool="prefork", concurrency=1)
    try:
        assert worker.wait(timeout=START_TIMEOUT) != 0
    finally:
        stop_process(worker)
    assert "set PROMETHEUS_MULTIPROC_DIR" in log.read_text()


def test_a_taken_port_stops_the_worker_naming_the_variable(
    live_server_env: dict[str, str], redis_server: RedisProcess, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = worker_env(live_server_env, redis_server, taken.getsockname()[1])
        log = tmp_path / "worker.log"
        worker = start_celery_worker(env=env, log=log, pool="threads", concurrency=1)
        try:
            assert worker.wait(timeout=START_TIMEOUT) != 0
        finally:
            stop_process(worker)
    assert "WORKER_METRICS_PORT: cannot serve on 127.0.0.1" in log.read_text()
