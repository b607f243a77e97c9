"""A kind from an app of its own, end to end: an app this test writes (apps.py and
jobkinds.py in a folder on PYTHONPATH), enabled only through JOBSTREAM_EXTRA_APPS for a
real daphne and a real Celery worker, is listed, runs to success, streams over the job
socket and has its page. (The in-process worker cannot load a new app: its registry was
set up with the test run's.) Both processes use a Redis of their own, so no other
worker takes the job.

Sync on purpose (httpx, websockets' sync client), as tests/jobs/test_cancel.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect
from websockets.typing import Origin

from core.redis_local import RedisProcess, start_redis
from tests.kind_apps import env_with_apps, write_kind_app
from tests.live_daphne import DaphneProcess, start_celery_worker
from tests.processes import stop_process
from tests.waiting import wait_until

KIND = "wave"
TITLE = "Wave from an app of its own"
TIMES = 4
WORKER_START_TIMEOUT = 60.0  # seconds for the worker to be ready on a busy machine
JOB_TIMEOUT = 60.0  # seconds from the submit to the terminal frame
FRAME_TIMEOUT = 10.0  # seconds for the close after the terminal frame
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def daphne(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[DaphneProcess]:
    """daphne and a threads worker, both with the app installed by JOBSTREAM_EXTRA_APPS only."""
    write_kind_app(tmp_path / "apps", "wave_app", {KIND: TITLE}, pause=0.2)
    redis: RedisProcess = start_redis()
    env = env_with_apps({**live_server_env, "REDIS_URL": redis.url}, pythonpath=tmp_path / "apps", apps="wave_app")
    server = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    worker_log = tmp_path / "worker.log"
    worker = start_celery_worker(env=env, log=worker_log, pool="threads", concurrency=2)
    try:
        server.start()
        ready = wait_until(lambda: " ready." in worker_log.read_text(errors="replace"), timeout=WORKER_START_TIMEOUT)
        assert ready, f"the worker did not start:\n{worker_log.read_text()[-3000:]}"
        yield server
    finally:
        stop_process(worker)
        server.stop()
        redis.stop()


def test_kind_of_an_extra_app_is_listed_runs_streams_and_has_its_page(daphne: DaphneProcess) -> None:
    with httpx.Client(base_url=daphne.url, timeout=FRAME_TIMEOUT) as http:
        assert http.get("/").status_code == 200  # the session
        kinds = {kind["name"]: kind for kind in http.get("/api/job-kinds/").json()}
        assert kinds[KIND]["title"] == TITLE
        assert kinds[KIND]["description"] == "Waves, times times."

        response = http.post(
            "/api/jobs/",
            json={"kind": KIND, "params": {"times": TIMES}},
            headers={"X-CSRFToken": http.cookies["csrftoken"]},
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        jobs: list[dict[str, Any]] = []
        logs: list[str] = []
        deadline = time.monotonic() + JOB_TIMEOUT
        with connect(
            f"{daphne.ws_url}/ws/jobs/{job_id}/",
            origin=Origin(daphne.url),
            additional_headers={"Cookie": f"sessionid={http.cookies['sessionid']}"},
            open_timeout=FRAME_TIMEOUT,
        ) as socket:
            while not jobs or jobs[-1]["state"] not in TERMINAL:
                frame = json.loads(socket.recv(timeout=max(0.01, deadline - time.monotonic())))
                if frame["type"] == "log":
                    logs.extend(line["text"] for line in frame["lines"])
                    continue
                assert frame["type"] == "job", frame
                jobs.append(frame["job"])
            with pytest.raises(ConnectionClosedOK):
                socket.recv(timeout=FRAME_TIMEOUT)
            assert socket.close_code == 1000  # after the terminal frame

        ended = jobs[-1]
        assert ended["state"] == "succeeded", ended
        assert ended["kind"] == KIND
        assert ended["result"] == {"waved": TIMES}
        assert ended["progress"]["current"] == TIMES
        assert http.get(f"/api/jobs/{job_id}/").json() == ended

        page = http.get(f"/jobs/{job_id}/")
        assert page.status_code == 200
        assert f"<title>{KIND} job · jobstream</title>" in page.text  # the page names the kind
    # The socket's log frames: its backfill after the first frame, then the new lines.
    assert logs == [f"wave {n}" for n in range(1, TIMES + 1)]
