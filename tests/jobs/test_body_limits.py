"""Request bodies checked before they are read (jobs/body_limits.py, enforced in daphne by
core/compat/daphne.py): the limit of each path, and a real daphne answering 413 from the
head of a request whose body never comes, cutting a chunked body at the limit with its
memory flat, and still taking an upload just under the limit."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import override_settings

from core.compat.daphne import BodyLimit
from jobs.body_limits import MULTIPART_OVERHEAD, request_body_limit
from jobs.models import Job
from tests.live_daphne import DaphneProcess
from tests.waiting import wait_until

CSV_LIMIT = 2 * 1024 * 1024  # CSV_IMPORT_MAX_BYTES of the daphne here: the limit follows the setting
CLAIMED = 50 * 1000 * 1000 * 1000 // 1000  # the Content-Length claimed: 50 MB, none of it sent
ANSWER_WITHIN = 1.0  # seconds for the 413 to arrive from the head alone
CLOSE_WITHIN = 10.0  # seconds for the connection to end after the 413 (daphne lingers 2 s)
IMPORT_TIMEOUT = 120.0  # seconds for the 2 MB upload's import to end
STREAMED = 50 * 1024 * 1024  # bytes a chunked client tries to send
PIECE = 64 * 1024  # one chunk of its body
RSS_GROWTH_MAX = 16 * 1024 * 1024  # daphne's growth while the chunked body streams in
JSON = "application/json"
MULTIPART = "multipart/form-data; boundary=jobstream-boundary"


# --- the limit of each path -----------------------------------------------------------


def limit_of(method: str, path: str, content_type: str) -> BodyLimit:
    limit = request_body_limit(method, path, content_type)
    assert limit is not None
    return limit


@override_settings(CSV_IMPORT_MAX_BYTES=CSV_LIMIT)
@pytest.mark.parametrize("path", ["/", "/api/jobs/"])
def test_a_multipart_upload_to_the_form_or_the_api_may_carry_the_largest_file_and_its_fields(path: str) -> None:
    assert limit_of("POST", path, "multipart/form-data").max_bytes == CSV_LIMIT + MULTIPART_OVERHEAD


@pytest.mark.parametrize(
    ("path", "content_type", "max_bytes"),
    [
        ("/api/jobs/", "application/json", 64 * 1024),
        ("/api/jobs/abc/cancel/", "application/json", 64 * 1024),
        ("/", "application/x-www-form-urlencoded", 64 * 1024),
        ("/admin/login/", "multipart/form-data", 64 * 1024 + MULTIPART_OVERHEAD),
    ],
)
def test_every_other_body_is_held_to_the_fields_limit(path: str, content_type: str, max_bytes: int) -> None:
    assert limit_of("POST", path, content_type).max_bytes == max_bytes


@override_settings(CSV_IMPORT_MAX_BYTES=CSV_LIMIT)
def test_the_413_names_the_limit_in_the_api_errors_shape_on_api_paths_and_in_text_elsewhere() -> None:
    upload = limit_of("POST", "/api/jobs/", "multipart/form-data").refusal(CLAIMED)
    assert upload.content_type == "application/json"
    assert json.loads(upload.body) == {
        "errors": {"file": ["The upload is 47.7 MiB; a file may be at most 2 MiB (CSV_IMPORT_MAX_BYTES)."]}
    }
    body = limit_of("POST", "/api/jobs/", "application/json").refusal(None)
    assert json.loads(body.body) == {"errors": {"body": ["The body is larger than 64 KiB."]}}
    form = limit_of("POST", "/", "multipart/form-data").refusal(CLAIMED)
    assert form.content_type.startswith("text/plain")
    assert "2 MiB (CSV_IMPORT_MAX_BYTES)" in form.body.decode()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=None)
def test_no_fields_limit_leaves_other_bodies_unlimited() -> None:
    assert request_body_limit("POST", "/api/jobs/", "application/json") is None


# --- a real daphne ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daphne(live_server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    env = {**live_server_env, "CSV_IMPORT_MAX_BYTES": str(CSV_LIMIT)}
    server = DaphneProcess(env=env, log=tmp_path_factory.mktemp("bodies") / "daphne.log")
    server.start()
    yield server
    server.stop()


def request_head(daphne: DaphneProcess, path: str, content_type: str, length: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nContent-Type: {content_type}\r\n{length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket, *, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one response with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closes(sock: socket.socket, *, timeout: float) -> bool:
    """Whether the server ends the connection (after the response) within `timeout`."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize(
    ("path", "content_type", "expected"),
    [
        ("/api/jobs/", JSON, '"body": ["The body is larger than 64 KiB."]'),
        ("/api/jobs/", MULTIPART, "a file may be at most 2 MiB (CSV_IMPORT_MAX_BYTES)"),
        ("/", MULTIPART, "a file may be at most 2 MiB (CSV_IMPORT_MAX_BYTES)"),
        ("/", "application/x-www-form-urlencoded", "The body is larger than 64 KiB."),
    ],
    ids=["api-json", "api-multipart", "form-multipart", "form-urlencoded"],
)
def test_a_body_claimed_over_the_limit_is_refused_413_from_the_head_alone(
    daphne: DaphneProcess, path: str, content_type: str, expected: str
) -> None:
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        started = time.monotonic()
        sock.sendall(request_head(daphne, path, content_type, f"Content-Length: {CLAIMED}"))
        status, headers, body = read_response(sock, timeout=5 * ANSWER_WITHIN)
        took = time.monotonic() - started
        assert closes(sock, timeout=CLOSE_WITHIN), "daphne kept the connection of a refused body open"
    print(f"413 for {path} ({content_type}) after {took * 1000:.1f} ms")
    assert status == 413, body
    assert took < ANSWER_WITHIN, f"413 only after {took:.2f} s"
    assert expected in body.decode()
    assert headers["connection"] == "close"
    if path.startswith("/api/"):
        assert headers["content-type"] == "application/json"
        assert set(json.loads(body)) == {"errors"}
    else:
        assert headers["content-type"].startswith("text/plain")


def test_a_claimed_body_over_the_limit_with_expect_100_continue_gets_no_continue(daphne: DaphneProcess) -> None:
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        sock.sendall(request_head(daphne, "/api/jobs/", JSON, f"Content-Length: {CLAIMED}\r\nExpect: 100-continue"))
        status, _, _ = read_response(sock, timeout=5 * ANSWER_WITHIN)
        assert status == 413
        sock.settimeout(CLOSE_WITHIN)
        assert sock.recv(65536) == b"", "daphne wrote more after the 413"


def test_a_chunked_body_is_cut_at_the_limit_with_413_and_daphnes_memory_flat(daphne: DaphneProcess) -> None:
    rss_before = daphne.rss()
    piece = b"%x\r\n%s\r\n" % (PIECE, b"x" * PIECE)
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", daphne.port)) as sock:
        sock.sendall(request_head(daphne, "/api/jobs/", JSON, "Transfer-Encoding: chunked"))
        deadline = time.monotonic() + 30
        # A client that watches for an early answer while it sends, as curl does.
        while sent < STREAMED and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                answer = sock.recv(65536)
                break
            if writable:
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += PIECE
        rss_after = daphne.rss()
        if not answer:
            sock.settimeout(5)
            answer = sock.recv(65536)
    growth = rss_after - rss_before
    print(f"chunked body: 413 seen after {sent / 2**10:.0f} KiB sent; daphne RSS grew by {growth / 2**20:.1f} MiB")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"The body is larger than 64 KiB."' in answer
    assert sent < STREAMED, "daphne took the whole chunked body before it answered"
    assert growth < RSS_GROWTH_MAX, f"daphne grew by {growth / 2**20:.1f} MiB"


def contacts_csv(size: int) -> bytes:
    """A valid contacts file of exactly `size` bytes."""
    header, row = b"email,name,age\n", b"someone@example.com,Some One,42\n"
    rows = (size - len(header)) // len(row) - 1
    last = size - len(header) - rows * len(row)  # one more row, its name padded to fit
    return header + row * rows + b"pad@example.com," + b"p" * (last - 19) + b",1\n"


@pytest.mark.parametrize(
    ("path", "field", "status"), [("/api/jobs/", "file", 201), ("/", "csv_import-file", 302)], ids=["api", "form"]
)
def test_an_upload_just_under_the_limit_still_goes_through(
    daphne: DaphneProcess, worker: Any, path: str, field: str, status: int
) -> None:
    content = contacts_csv(CSV_LIMIT - 1024)
    assert len(content) == CSV_LIMIT - 1024
    with httpx.Client(base_url=daphne.url, timeout=30) as client:
        assert client.get("/").status_code == 200
        token = client.cookies["csrftoken"]
        response = client.post(
            path,
            data={"kind": "csv_import", **({} if path.startswith("/api/") else {"csrfmiddlewaretoken": token})},
            files={field: ("contacts.csv", content, "text/csv")},
            headers={"X-CSRFToken": token},
        )
    assert response.status_code == status, response.text[:2000]
    job = Job.objects.get(kind="csv_import")
    upload = Path(daphne.env["MEDIA_ROOT"]) / job.params["file"]
    assert upload.read_bytes() == content
    # The import ends before the test does: a worker still writing its rows would hold
    # locks the next test's table flush waits on (a deadlock on PostgreSQL).
    assert wait_until(lambda: Job.objects.get(id=job.id).is_terminal, timeout=IMPORT_TIMEOUT, interval=0.2)
