"""Flower as `make run` and compose start it: a real Flower process on the test Redis,
watching a real worker's task events, reached through its REST API behind basic auth.

Also the staff-only link to it in the page header.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from core.redis_local import RedisProcess, free_port
from tests.accounts import VIEW_ALL_JOBS, user_with
from tests.processes import stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CELERY = Path(sys.executable).parent / "celery"
FLOWER_CREDENTIALS = "ops:flower-test-secret"
FLOWER_START_TIMEOUT = 60  # seconds: Flower imports Django and Celery and connects to the broker


@dataclass
class FlowerProcess:
    process: subprocess.Popen[bytes]
    url: str  # ends in /flower
    log: Path

    def get(self, path: str, *, auth: str | None = FLOWER_CREDENTIALS) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}")
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300], self.tail())
        return json.loads(body)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _flower_events_subscribed(redis_client: Any, flower_pid: int) -> bool:
    """True once Flower's event receiver listens: a Redis connection of the Flower
    process with a (pattern) subscription, which is how kombu's Redis transport takes
    the `celeryev` fanout. Events published before that are lost to Flower."""
    try:
        ports = {conn.laddr.port for conn in psutil.Process(flower_pid).net_connections(kind="tcp") if conn.raddr}
    except psutil.NoSuchProcess:
        return False
    for client in redis_client.client_list():
        port = int(str(client["addr"]).rsplit(":", 1)[1])
        if port in ports and (int(client.get("psub", 0)) or int(client.get("sub", 0))):
            return True
    return False


@pytest.fixture(scope="module")
def flower(
    redis_server: RedisProcess, live_server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowerProcess]:
    """`celery flower` with the flags of the Procfile and docker-compose.yml, on a free port."""
    import redis

    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = {**live_server_env, "CELERY_BROKER_URL": redis_server.url, "CELERY_RESULT_BACKEND": redis_server.url}
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    command = [
        str(CELERY),
        "-A",
        "celery_app",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        "--url_prefix=flower",
        f"--basic_auth={FLOWER_CREDENTIALS}",
        "--persistent=False",
        "--max_tasks=10000",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    flower = FlowerProcess(process, f"http://127.0.0.1:{port}/flower", log)
    client = redis.Redis.from_url(redis_server.url)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"Flower exited at start:\n{flower.tail()}")
            return flower.get("/healthcheck", auth=None)[0] == 200 and _flower_events_subscribed(client, process.pid)

        assert wait_until(ready, timeout=FLOWER_START_TIMEOUT, interval=0.1), (
            f"Flower never got ready:\n{flower.tail()}"
        )
        yield flower
    finally:
        client.close()
        stop_process(process)


# --- Flower's API ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_flower_finds_a_finished_jobs_task_by_the_job_id(flower: FlowerProcess, worker: Any) -> None:
    response = Client().post(
        "/api/jobs/", {"kind": "sleep", "params": {"steps": 2, "step_seconds": 0}}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    seen: dict[str, Any] = {}

    def task_succeeded() -> bool:
        status, body = flower.get(f"/api/task/info/{job_id}")
        if status == 200:
            seen.update(json.loads(body))
        return seen.get("state") == "SUCCESS"

    assert wait_until(task_succeeded, timeout=30, interval=0.2), f"last seen: {seen}\n{flower.tail()}"
    assert seen["uuid"] == job_id  # the task id is the job id
    assert seen["name"] == "jobs.run_job"  # the friendly name, as `celery inspect` shows it
    assert job_id in seen["args"]
    assert seen["worker"]  # the worker's node name, from its task events
    assert seen["received"] and seen["started"] and seen["succeeded"]

    tasks = flower.get_json("/api/tasks?taskname=jobs.run_job")
    assert job_id in tasks
    assert tasks[job_id]["state"] == "SUCCESS"


def test_flower_answers_404_for_a_task_it_never_saw(flower: FlowerProcess) -> None:
    assert flower.get("/api/task/info/00000000-0000-0000-0000-000000000000")[0] == 404


@pytest.mark.parametrize("path", ["/api/tasks", "/api/workers", "/api/task/info/x", "/", "/tasks"])
def test_flower_refuses_requests_without_credentials(flower: FlowerProcess, path: str) -> None:
    assert flower.get(path, auth=None)[0] == 401


def test_flower_refuses_a_wrong_password(flower: FlowerProcess) -> None:
    assert flower.get("/api/tasks", auth="ops:not-the-password")[0] == 401


def test_flower_healthcheck_answers_without_credentials(flower: FlowerProcess) -> None:
    assert flower.get("/healthcheck", auth=None) == (200, b"OK")


def test_flower_serves_only_under_its_prefix(flower: FlowerProcess) -> None:
    root = flower.url.removesuffix("/flower")
    status, _ = FlowerProcess(flower.process, root, flower.log).get("/api/tasks")
    assert status == 404


# --- the staff link in the page header --------------------------------------------


@pytest.mark.django_db
def test_staff_see_the_flower_link_in_the_header(settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    staff = user_with("ada", VIEW_ALL_JOBS, is_staff=True, password="pw-ada-123456")
    client = Client()
    client.force_login(staff)
    page = client.get("/").content.decode()
    assert 'href="https://ops.example.com/flower/"' in page
    assert ">Flower</a>" in page


@pytest.mark.django_db
def test_staff_see_the_flower_link_on_a_job_page(settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    staff = user_with("ada", VIEW_ALL_JOBS, is_staff=True, password="pw-ada-123456")
    client = Client()
    client.force_login(staff)
    job = client.post("/api/jobs/", {"kind": "sleep", "params": {"steps": 1}}, content_type="application/json")
    assert job.status_code == 201, job.content
    page = client.get(f"/jobs/{job.json()['id']}/").content.decode()
    assert 'href="https://ops.example.com/flower/"' in page


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/no-such-page/"])
def test_staff_get_the_flower_link_on_pages_whose_views_do_not_pass_it(path: str, settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    settings.DEBUG = False  # the site's own 404 page, with the header
    staff = user_with("ada", VIEW_ALL_JOBS, is_staff=True, password="pw-ada-123456")
    client = Client()
    client.force_login(staff)
    page = client.get(path).content.decode()
    assert 'href="https://ops.example.com/flower/"' in page


@pytest.mark.django_db
def test_the_staff_flag_alone_gets_no_flower_link_nor_live_view_link(settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    client = Client()
    client.force_login(user_with("clerk", is_staff=True, password="pw-clerk-123456"))
    page = client.get("/").content.decode()
    assert "https://ops.example.com/flower/" not in page
    assert "/staff/jobs/" not in page
    assert 'href="/admin/"' in page  # the admin itself checks the model permissions


@pytest.mark.django_db
def test_signed_in_users_who_are_not_staff_get_no_flower_link(settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    user = get_user_model().objects.create_user("bob", password="pw-bob-123456")
    client = Client()
    client.force_login(user)
    page = client.get("/").content.decode()
    assert "ops.example.com/flower" not in page
    assert ">Flower</a>" not in page


@pytest.mark.django_db
def test_anonymous_visitors_get_no_flower_link(settings: Any) -> None:
    settings.FLOWER_URL = "https://ops.example.com/flower/"
    page = Client().get("/").content.decode()
    assert "ops.example.com/flower" not in page
    assert ">Flower</a>" not in page
