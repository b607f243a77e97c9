"""deploy/nginx.conf in front of two daphnes: Debian's nginx runs the file operators
install, and the streams, the page, uploads, downloads and client addresses go
through it. Real nginx, daphnes, worker, Redis and Chromium; nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from playwright.sync_api import Page, expect
from websockets.asyncio.client import ClientConnection, connect

from jobs.models import Job
from tests.e2e.test_browser import JOB_TIMEOUT, first_card, open_index, submit_form
from tests.live_daphne import DaphneProcess
from tests.nginx import CONFIG, NGINX, NginxProcess, markers
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 15.0  # seconds for any one answer or frame through the proxy
PROXY_HEADERS = ("--proxy-headers", "--proxy-headers-host", "X-Real-IP")
TERMINAL = {"succeeded", "failed", "cancelled"}
IMPORT_TIMEOUT = 60.0  # seconds for the 3.5 MB CSV's import to end


@dataclass
class Proxied:
    """nginx on `url`, two daphnes behind it."""

    url: str
    ws_url: str
    daphnes: list[DaphneProcess]
    nginx: NginxProcess


@pytest.fixture(scope="module")
def proxied(
    live_server_env: dict[str, str], media_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    if not NGINX.is_file():
        # A failure, never a skip: `make test` installs Debian's nginx.
        pytest.fail(f"no nginx at {NGINX} (NGINX_PATH): `make test` installs Debian's nginx", pytrace=False)
    workdir = tmp_path_factory.mktemp("proxy")
    env = {**live_server_env, "RESULT_ACCEL_REDIRECT": "/_results/", "TRUSTED_PROXIES": "127.0.0.1"}
    daphnes = [
        DaphneProcess(env=env, log=workdir / f"daphne-{index}.log", extra_args=PROXY_HEADERS) for index in (1, 2)
    ]
    nginx = NginxProcess(
        upstreams=[f"127.0.0.1:{daphne.port}" for daphne in daphnes], media_root=media_root, workdir=workdir
    )
    try:
        for daphne in daphnes:
            daphne.start()
        nginx.start()
        yield Proxied(url=nginx.url, ws_url=nginx.ws_url, daphnes=daphnes, nginx=nginx)
    finally:
        nginx.stop()
        for daphne in daphnes:
            daphne.stop()


@pytest.fixture
async def client(proxied: Proxied) -> AsyncIterator[httpx.AsyncClient]:
    """A visitor of the proxy with a session (the first GET / creates it)."""
    async with httpx.AsyncClient(base_url=proxied.url, timeout=TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200
        yield client


async def start_job(client: httpx.AsyncClient, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(
        "/api/jobs/", json={"kind": kind, "params": params}, headers={"X-CSRFToken": client.cookies["csrftoken"]}
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def open_socket(proxied: Proxied, client: httpx.AsyncClient, path: str) -> Any:
    return connect(
        f"{proxied.ws_url}{path}",
        origin=proxied.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}"},
        open_timeout=TIMEOUT,
    )


async def next_job_frame(socket: ClientConnection) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if frame["type"] != "log":  # the job's log lines come between its frames
            return frame


async def state_of(client: httpx.AsyncClient, job_id: str) -> str:
    state: str = (await client.get(f"/api/jobs/{job_id}/")).json()["state"]
    return state


def job_ended(job_id: str) -> bool:
    return Job.objects.get(id=job_id).state in TERMINAL


def sockets_from_nginx(daphne: DaphneProcess) -> int:
    """Established connections on the daphne's port (nginx is its only client here)."""
    return sum(
        1
        for connection in psutil.Process(daphne.pid).net_connections(kind="tcp")
        if connection.laddr and connection.laddr.port == daphne.port and connection.status == psutil.CONN_ESTABLISHED
    )


# --- the file itself -------------------------------------------------------------


def test_the_shipped_file_fills_in_and_nginx_accepts_it(proxied: Proxied) -> None:
    assert markers(CONFIG.read_text()) == {
        "JOBSTREAM_LISTEN",
        "JOBSTREAM_SERVER_NAME",
        "JOBSTREAM_UPSTREAM_SERVERS",
        "JOBSTREAM_MEDIA_ROOT",
    }
    checked = proxied.nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


# --- streams ---------------------------------------------------------------------


async def test_sockets_spread_over_both_daphnes_and_stream_a_job_live_to_its_end(
    proxied: Proxied, client: httpx.AsyncClient, worker: Any
) -> None:
    owners = [open_socket(proxied, client, "/ws/jobs/") for _ in range(4)]
    opened = [await owner.__aenter__() for owner in owners]
    try:
        for socket in opened:
            assert (await next_job_frame(socket))["type"] == "snapshot"
        # least_conn: four long-lived sockets are not all on one daphne.
        assert wait_until(lambda: all(sockets_from_nginx(daphne) >= 1 for daphne in proxied.daphnes), timeout=TIMEOUT)

        job = await start_job(client, "sleep", {"steps": 20, "step_seconds": 0.1})
        jobs: list[dict[str, Any]] = []
        async with open_socket(proxied, client, f"/ws/jobs/{job['id']}/") as socket:
            while not jobs or jobs[-1]["state"] not in TERMINAL:
                frame = await next_job_frame(socket)
                assert frame["type"] == "job", frame
                jobs.append(frame["job"])
                if len(jobs) == 2:  # a frame went through while the job was still running
                    assert await state_of(client, job["id"]) == "running"
        assert jobs[-1]["state"] == "succeeded"
        assert any(frame["state"] == "running" and frame["progress"] for frame in jobs)
        # Every owner socket, whichever daphne holds it, hears the end.
        for socket in opened:
            frame = await next_job_frame(socket)
            while frame["job"]["state"] not in TERMINAL:
                frame = await next_job_frame(socket)
            assert frame["job"]["id"] == job["id"] and frame["job"]["state"] == "succeeded"
    finally:
        for owner in owners:
            await owner.__aexit__(None, None, None)


async def test_events_pass_the_proxy_at_once_while_the_job_runs(
    proxied: Proxied, client: httpx.AsyncClient, worker: Any
) -> None:
    job = await start_job(client, "sleep", {"steps": 30, "step_seconds": 0.1})
    events: list[dict[str, Any]] = []
    async with client.stream("GET", f"/api/jobs/{job['id']}/events/") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "job":
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 2:
                    # Unbuffered: the second event arrived before the job ended. A
                    # buffering proxy would hold these few hundred bytes to the end.
                    assert await state_of(client, job["id"]) == "running"
                if events[-1]["state"] in TERMINAL:
                    break
    assert len(events) >= 3 and events[-1]["state"] == "succeeded"


# --- files -----------------------------------------------------------------------


async def test_a_result_goes_out_from_nginx_after_the_owner_check(
    proxied: Proxied, client: httpx.AsyncClient, worker: Any
) -> None:
    job = await start_job(client, "report", {"rows": 2000})
    assert wait_until(lambda: job_ended(job["id"]), timeout=TIMEOUT)
    done = (await client.get(f"/api/jobs/{job['id']}/")).json()
    assert done["state"] == "succeeded" and done["result_url"], done
    stored = Job.objects.get(id=job["id"])

    downloaded = await client.get(done["result_url"])
    assert downloaded.status_code == 200
    assert "x-accel-redirect" not in downloaded.headers  # nginx took it and sent the file
    assert "attachment" in downloaded.headers["content-disposition"]
    assert downloaded.content == Path(stored.result_file.path).read_bytes()

    # Straight from a daphne, the same request gets the redirect and no body: the bytes
    # above came from nginx.
    direct = httpx.get(
        f"{proxied.daphnes[0].url}{done['result_url']}", cookies={"sessionid": client.cookies["sessionid"]}
    )
    assert direct.status_code == 200 and direct.headers["x-accel-redirect"].startswith("/_results/")
    assert direct.content == b""
    # The internal location is not reachable from outside, nor the result by anybody else.
    assert (await client.get(direct.headers["x-accel-redirect"])).status_code == 404
    async with httpx.AsyncClient(base_url=proxied.url, timeout=TIMEOUT) as stranger:
        assert (await stranger.get(done["result_url"])).status_code == 404


async def test_a_legal_upload_passes_and_bodies_over_the_limits_get_413_naming_them(
    proxied: Proxied, client: httpx.AsyncClient, worker: Any
) -> None:
    header = b"email,name,age\n"
    row = b"someone@example.com,Some " + b"O" * 180 + b" One,40\n"  # long rows: fewer of them to import
    csv = header + row * (3_500_000 // len(row))  # 3.5 MB: over nginx's default 1 MiB, under the 5 MiB limit
    upload = await client.post(
        "/api/jobs/",
        data={"kind": "csv_import", "params": "{}"},
        files={"file": ("contacts.csv", csv, "text/csv")},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert upload.status_code == 201, upload.text

    # Over the upload path's 6 MiB: nginx answers, in JSON, naming the limit.
    too_big = await client.post(
        "/api/jobs/",
        data={"kind": "csv_import", "params": "{}"},
        files={"file": ("contacts.csv", header + row * (7_000_000 // len(row)), "text/csv")},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert too_big.status_code == 413
    assert "6 MiB" in too_big.json()["errors"]["body"][0]
    # Between 5 and 6 MiB, jobstream's own 413 names the file's limit.
    over_file = await client.post(
        "/api/jobs/",
        data={"kind": "csv_import", "params": "{}"},
        files={"file": ("contacts.csv", header + row * (5_500_000 // len(row)), "text/csv")},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert over_file.status_code == 413 and "file" in over_file.json()["errors"], over_file.text
    # Any other path takes 1 MiB.
    elsewhere = await client.post(
        f"/api/jobs/{upload.json()['id']}/cancel/",
        content=b"x" * 2_000_000,
        headers={"X-CSRFToken": client.cookies["csrftoken"], "Content-Type": "application/json"},
    )
    assert elsewhere.status_code == 413 and "1 MiB" in elsewhere.json()["errors"]["body"][0]
    # The import ends before the test does: a worker still writing its rows would hold
    # locks the next test's table flush waits on.
    assert wait_until(lambda: job_ended(upload.json()["id"]), timeout=IMPORT_TIMEOUT, interval=0.2)
    assert Job.objects.get(id=upload.json()["id"]).state == "succeeded"


# --- client address --------------------------------------------------------------


async def test_the_job_records_the_address_nginx_saw_not_one_the_client_wrote(proxied: Proxied, worker: Any) -> None:
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=proxied.url, timeout=TIMEOUT, transport=transport) as client:
        assert (await client.get("/")).status_code == 200
        response = await client.post(
            "/api/jobs/",
            json={"kind": "sleep", "params": {"steps": 1, "step_seconds": 0.01}},
            headers={"X-CSRFToken": client.cookies["csrftoken"], "X-Forwarded-For": "203.0.113.9"},
        )
        assert response.status_code == 201, response.text
        job = response.json()
    assert Job.objects.get(id=job["id"]).client_address == "127.0.0.2"
    assert wait_until(lambda: job_ended(job["id"]), timeout=TIMEOUT)


# --- the page --------------------------------------------------------------------


def test_the_page_runs_a_job_live_through_the_proxy(proxied: Proxied, worker: Any, page: Page) -> None:
    open_index(page, proxied)  # type: ignore[arg-type]
    expect(page.locator("[data-connection]")).to_have_text("live")
    submit_form(page, "sleep", steps=10, step_seconds=0.1)
    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    assert page.evaluate("window.jobstream.transport") == "ws"
    # The page's socket went through nginx (an upgrade: 101 in its access log).
    assert wait_until(lambda: '"GET /ws/jobs/ HTTP/1.1" 101' in proxied.nginx.access_log.read_text(), timeout=TIMEOUT)
