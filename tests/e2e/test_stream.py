"""End to end: a job posted over HTTP runs on a real worker and streams to a
`websockets` client through the live daphne and the Redis channel layer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import LiveServer

FRAME_TIMEOUT = 10.0  # seconds for the next frame: covers queueing behind another test's job
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """A visitor with a session: the first GET / creates it (cookies persist)."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=FRAME_TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200
        yield client


async def start_sleep_job(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(
        "/api/jobs/",
        json={"kind": "sleep", "params": {"steps": 10, "step_seconds": 0.05}},
        headers={"X-CSRFToken": client.cookies["csrftoken"]},
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def open_socket(live_server: LiveServer, client: httpx.AsyncClient, path: str) -> Any:
    return connect(
        f"{live_server.ws_url}{path}",
        origin=live_server.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}"},
        open_timeout=FRAME_TIMEOUT,
    )


async def next_frame(socket: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT))
    return frame


async def test_job_socket_streams_a_running_job_to_success_and_closes_1000(
    live_server: LiveServer, client: httpx.AsyncClient, worker: Any
) -> None:
    job = await start_sleep_job(client)
    jobs: list[dict[str, Any]] = []

    async with open_socket(live_server, client, f"/ws/jobs/{job['id']}/") as socket:
        while not jobs or jobs[-1]["state"] not in TERMINAL:
            frame = await next_frame(socket)
            if frame["type"] == "log":  # the job's log lines, between its frames (tests/e2e/test_job_log.py)
                continue
            assert frame["type"] == "job"
            jobs.append(frame["job"])
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT)
        assert socket.close_code == 1000

    assert jobs[-1]["state"] == "succeeded"
    assert jobs[-1]["result"] == {"steps": 10, "seconds": 0.5}
    seqs = [job["seq"] for job in jobs]
    assert seqs == sorted(set(seqs)), f"seq not strictly increasing: {seqs}"
    percents = [job["progress"]["percent"] for job in jobs if job["progress"] is not None]
    assert percents, "no progress frame arrived"
    assert percents == sorted(percents), f"progress went back: {percents}"
    assert percents[-1] == 100.0


async def test_owner_socket_opened_before_the_job_receives_it_through_to_the_end(
    live_server: LiveServer, client: httpx.AsyncClient, worker: Any
) -> None:
    async with open_socket(live_server, client, "/ws/jobs/") as socket:
        snapshot = await next_frame(socket)
        assert snapshot["type"] == "snapshot"
        job = await start_sleep_job(client)
        states: list[str] = []
        seqs: list[int] = []
        while not states or states[-1] not in TERMINAL:
            frame = await next_frame(socket)
            if frame["type"] == "job" and frame["job"]["id"] == job["id"]:
                states.append(frame["job"]["state"])
                seqs.append(frame["job"]["seq"])

    # "queued" (from the web process) may lose the race to "running" (from the worker):
    # the consumer then drops it as stale, which is the seq rule at work.
    assert "running" in states
    assert states[-1] == "succeeded"
    assert seqs == sorted(set(seqs)), f"seq not strictly increasing: {seqs}"


async def test_websocket_handshake_without_origin_is_refused_with_403(
    live_server: LiveServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"{live_server.ws_url}/ws/jobs/",
            additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}"},
            open_timeout=FRAME_TIMEOUT,
        ):
            pass

    assert refused.value.response.status_code == 403


async def test_websocket_handshake_from_foreign_origin_is_refused_with_403(
    live_server: LiveServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"{live_server.ws_url}/ws/jobs/",
            origin="http://evil.example",  # type: ignore[arg-type]
            open_timeout=FRAME_TIMEOUT,
        ):
            pass

    assert refused.value.response.status_code == 403


# --- signed-in owners: the consumer finds the user from the session ---------------------


def _signed_in_session(username: str, secret_key: str) -> tuple[Any, str]:
    """A user and the session id of a browser signed in as them, valid for the live
    server (same database; the session hash is signed with the server's SECRET_KEY)."""
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    user = get_user_model().objects.create_user(username=username, password="pw-for-tests-only")
    browser = Client()
    with override_settings(SECRET_KEY=secret_key):
        browser.force_login(user)
    return user, browser.cookies["sessionid"].value


@contextlib.asynccontextmanager
async def _user_client(live_server: LiveServer, session_id: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=FRAME_TIMEOUT) as client:
        # The domain the server's own cookies get, so a refreshed session cookie
        # replaces this one instead of sitting beside it.
        client.cookies.set("sessionid", session_id, domain=httpx.URL(live_server.url).host)
        assert (await client.get("/")).status_code == 200  # sets the csrftoken cookie
        yield client


@pytest.mark.django_db(transaction=True)
async def test_signed_in_user_streams_own_jobs_and_not_another_users(
    live_server: LiveServer, live_server_env: dict[str, str]
) -> None:
    from asgiref.sync import sync_to_async

    secret_key = live_server_env["SECRET_KEY"]
    alice, alice_session = await sync_to_async(_signed_in_session)("alice", secret_key)
    _, bob_session = await sync_to_async(_signed_in_session)("bob", secret_key)
    async with (
        _user_client(live_server, alice_session) as alice_client,
        _user_client(live_server, bob_session) as bob_client,
    ):
        job = await start_sleep_job(alice_client)

        async with open_socket(live_server, alice_client, "/ws/jobs/") as socket:
            snapshot = await next_frame(socket)
        assert snapshot["type"] == "snapshot"
        assert [listed["id"] for listed in snapshot["jobs"]] == [job["id"]]

        async with open_socket(live_server, bob_client, "/ws/jobs/") as socket:
            assert (await next_frame(socket))["jobs"] == []
        async with open_socket(live_server, bob_client, f"/ws/jobs/{job['id']}/") as socket:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT)
            assert socket.close_code == 4404

        # A password change ends the user's other sessions (Django's session hash):
        # the socket's session no longer holds an owner, so it closes 4401.
        await sync_to_async(_change_password)(alice, secret_key)
        async with open_socket(live_server, alice_client, f"/ws/jobs/{job['id']}/") as socket:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT)
            assert socket.close_code == 4401


def _change_password(user: Any, secret_key: str) -> None:
    from django.test import override_settings

    with override_settings(SECRET_KEY=secret_key):
        user.set_password("another-pw-for-tests-only")
        user.save()
