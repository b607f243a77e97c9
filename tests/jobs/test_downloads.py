"""Result downloads (jobs/downloads.py): streamed with back-pressure by a real daphne
(core/compat/daphne.py), so clients that never read cost it little and slow nobody; or
handed to the proxy with X-Accel-Redirect, the owner still checked."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.test import Client, override_settings
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from tests.live_daphne import DaphneProcess, session_owner_token
from tests.waiting import wait_until

RESULT_BYTES = 49 * 1024 * 1024  # a large report's CSV
STALLED_CLIENTS = 40
STALLED_RCVBUF = 4096  # each stalled client's receive buffer: the kernel soon stops taking bytes
RSS_GROWTH_MAX = 100 * 1024 * 1024  # what 40 stalled downloads may cost daphne; buffered, they cost 40 x 49 MB
API_WITHIN = 2.0  # seconds for GET /api/jobs/ while the downloads stall
WATCH_SECONDS = 5.0  # how long daphne is watched with the stalled downloads open
START_TIMEOUT = 30.0  # seconds for every stalled download to have started


def result_content(size: int) -> bytes:
    """Bytes that differ from block to block, so a misordered or lost block shows."""
    line = b"%08d,some report row with a few columns,1234567890\n"
    out = bytearray()
    n = 0
    while len(out) < size:
        out += line % n
        n += 1
    return bytes(out[:size])


def job_with_result(*, owner_token: str, media_root: Path, content: bytes) -> Job:
    now = timezone.now()
    job_id = uuid.uuid4()
    relative = f"results/{job_id}/report.csv"
    path = media_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return Job.objects.create(
        id=job_id,
        owner_token=owner_token,
        kind="report",
        params={"rows": 10},
        state=JobState.SUCCEEDED,
        seq=3,
        created_at=now,
        started_at=now,
        finished_at=now,
        updated_at=now,
        result_file=relative,
    )


# --- streamed by a real daphne, with back-pressure -----------------------------------------


@pytest.fixture
def daphne(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(env=live_server_env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def stalled_download(daphne: DaphneProcess, path: str, sessionid: str) -> socket.socket:
    """A client that asks for the file and never reads a byte of the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect(("127.0.0.1", daphne.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nCookie: sessionid={sessionid}\r\n\r\n".encode()
    )
    return sock


def answer_started(sock: socket.socket) -> bool:
    """Whether the server's answer has begun to arrive (peeked, so nothing is read)."""
    try:
        return sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT).startswith(b"HTTP/1.1 200")
    except BlockingIOError:
        return False


def test_stalled_downloads_cost_daphne_little_and_slow_nobody_and_a_reader_gets_the_whole_file(
    daphne: DaphneProcess,
) -> None:
    content = result_content(RESULT_BYTES)
    with httpx.Client(base_url=daphne.url, timeout=30) as client:
        assert client.get("/").status_code == 200
        sessionid = client.cookies["sessionid"]
        token = session_owner_token(sessionid=sessionid, env=daphne.env)
        job = job_with_result(owner_token=token, media_root=Path(daphne.env["MEDIA_ROOT"]), content=content)
        path = f"/api/jobs/{job.id}/result/"
        assert client.get("/api/jobs/").status_code == 200
        rss_before = daphne.rss()

        stalled = [stalled_download(daphne, path, sessionid) for _ in range(STALLED_CLIENTS)]
        try:
            assert wait_until(lambda: all(answer_started(sock) for sock in stalled), timeout=START_TIMEOUT), (
                "not every stalled download started"
            )
            rss_peak, slowest = rss_before, 0.0
            watch_end = time.monotonic() + WATCH_SECONDS
            while time.monotonic() < watch_end:
                started = time.monotonic()
                assert client.get("/api/jobs/").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                rss_peak = max(rss_peak, daphne.rss())
                time.sleep(0.2)

            digest = hashlib.sha256()
            received = 0
            started = time.monotonic()
            with client.stream("GET", path) as response:
                assert response.status_code == 200
                for block in response.iter_bytes():
                    digest.update(block)
                    received += len(block)
            download_seconds = time.monotonic() - started
            rss_peak = max(rss_peak, daphne.rss())
        finally:
            for sock in stalled:
                sock.close()
        assert client.get("/api/jobs/").status_code == 200  # daphne carries on once they are gone

    growth = rss_peak - rss_before
    print(
        f"{STALLED_CLIENTS} stalled downloads of {RESULT_BYTES / 2**20:.0f} MiB: daphne RSS grew by "
        f"{growth / 2**20:.1f} MiB; slowest GET /api/jobs/ {slowest * 1000:.0f} ms; "
        f"a reading client took {download_seconds:.2f} s"
    )
    assert received == len(content) and digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert slowest < API_WITHIN, f"the API took {slowest:.2f} s"
    assert growth < RSS_GROWTH_MAX, f"daphne grew by {growth / 2**20:.1f} MiB"


# --- handed to the proxy --------------------------------------------------------------------


def own_job_with_result(client: Client, media_root: Path) -> Job:
    assert client.get("/").status_code == 200
    token = client.session[SESSION_OWNER_KEY]
    return job_with_result(owner_token=token, media_root=media_root, content=b"a,b\r\n1,2\r\n")


@pytest.mark.django_db
@override_settings(RESULT_ACCEL_REDIRECT="/_results/")
def test_with_accel_redirect_the_owner_gets_the_files_place_for_the_proxy_and_no_body(media_root: Path) -> None:
    client = Client()
    job = own_job_with_result(client, media_root)

    response = client.get(f"/api/jobs/{job.id}/result/")

    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/_results/results/{job.id}/report.csv"
    assert response["Content-Disposition"] == 'attachment; filename="report.csv"'
    assert response["Content-Type"] == "text/csv"
    assert response.content == b""


@pytest.mark.django_db
@override_settings(RESULT_ACCEL_REDIRECT="/_results/")
def test_with_accel_redirect_another_visitor_still_gets_404(media_root: Path) -> None:
    job = own_job_with_result(Client(), media_root)

    response = Client().get(f"/api/jobs/{job.id}/result/")

    assert response.status_code == 404
    assert "X-Accel-Redirect" not in response
