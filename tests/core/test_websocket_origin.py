"""The exact origin check (core/websocket_origin.py) in a real daphne: a handshake's
`Origin` must be the served origin or a CSRF_TRUSTED_ORIGINS one, in scheme, host and
port; another port or scheme of the same host is refused with 403."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from core.websocket_origin import WebOrigin, parse_origin
from tests.live_daphne import DaphneProcess

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10.0  # seconds for a handshake on this shared machine
TRUSTED = "https://jobs.example.com,https://*.example.org,http://127.0.0.1:3001"


@pytest.fixture(scope="module")
def daphne(live_server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    env = {**live_server_env, "CSRF_TRUSTED_ORIGINS": TRUSTED}
    server = DaphneProcess(env=env, log=tmp_path_factory.mktemp("origin") / "daphne.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cookie(daphne: DaphneProcess) -> dict[str, str]:
    with httpx.Client(base_url=daphne.url, timeout=TIMEOUT) as client:
        assert client.get("/").status_code == 200  # the page creates the anonymous session
        return {"Cookie": f"sessionid={client.cookies['sessionid']}"}


async def handshake_status(daphne: DaphneProcess, origin: str, cookie: dict[str, str]) -> int:
    """101 when the socket opened, else the HTTP status of the refusal."""
    try:
        async with connect(
            f"{daphne.ws_url}/ws/jobs/", origin=Origin(origin), additional_headers=cookie, open_timeout=TIMEOUT
        ) as socket:
            await asyncio.wait_for(socket.recv(), TIMEOUT)  # the snapshot: the stream really opened
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


@pytest.mark.parametrize(
    "origin",
    [
        "site",  # the served origin, http://127.0.0.1:<port>
        "https://jobs.example.com",
        "https://jobs.example.com:443",
        "https://a.example.org",
        "http://127.0.0.1:3001",
    ],
)
async def test_the_served_origin_and_the_trusted_ones_are_accepted(
    daphne: DaphneProcess, cookie: dict[str, str], origin: str
) -> None:
    assert await handshake_status(daphne, daphne.url if origin == "site" else origin, cookie) == 101


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:3000",  # a page on another port of the same host
        "https://127.0.0.1:{port}",  # the other scheme
        "http://localhost:{port}",  # another name in ALLOWED_HOSTS, not the one served
        "http://jobs.example.com",  # a trusted host over the wrong scheme
        "https://jobs.example.com:8443",  # ... on the wrong port
        "https://example.org.evil.example",
        "http://127.0.0.1:{port}/page",  # no browser sends a path
        "null",
    ],
)
async def test_an_origin_that_differs_in_scheme_host_or_port_is_refused_with_403(
    daphne: DaphneProcess, cookie: dict[str, str], origin: str
) -> None:
    assert await handshake_status(daphne, origin.replace("{port}", str(daphne.port)), cookie) == 403


def test_an_origin_parses_to_scheme_host_and_port_with_the_default_port_filled_in() -> None:
    assert parse_origin("HTTP://Example.COM") == WebOrigin("http", "example.com", 80)
    assert parse_origin("https://[::1]:8443") == WebOrigin("https", "::1", 8443)
    for bad in ("null", "", "ftp://example.com", "http://", "http://a:b@example.com", "http://example.com:99999"):
        assert parse_origin(bad) is None, bad


def test_a_daphne_log_shows_no_traceback_after_the_refusals(daphne: DaphneProcess) -> None:
    assert "Traceback" not in daphne.log.read_text(errors="replace")
