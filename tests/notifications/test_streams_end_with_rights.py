"""Streams end with the rights (docs/contract.md#close-codes), against the live daphne.

A user signs in through the real login view and opens a job socket, an owner socket and
an event stream; another client holding the same session cookie signs out through the
real logout view, and every one of them ends. A user watching the staff feed loses
jobs.view_all_jobs in the database, and the feed closes within 5 s.

Jobs are written as rows with no task behind them, so they stay queued and their
streams stay open until something ends them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from jobs.models import Job, JobState
from notifications.consumers import CLOSE_NOT_FOUND, CLOSE_SIGNED_OUT
from notifications.publish import publish_job_change
from tests.accounts import PASSWORD, VIEW_ALL_JOBS, user_with
from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

OPEN_TIMEOUT = 10.0  # seconds for a handshake or a first frame on this shared machine
END_TIMEOUT = 10.0  # seconds for a signed-out stream to end ("a few seconds", with room for load)
RIGHTS_DEADLINE = 5.0  # the staff feed stops within this many seconds of losing the right


@database_sync_to_async
def make_user(*codenames: str) -> Any:
    return user_with(f"u{secrets.token_hex(4)}", *codenames)


@database_sync_to_async
def make_job(**owner: Any) -> Job:
    now = timezone.now()
    return Job.objects.create(
        kind="sleep",
        params={"steps": 3, "step_seconds": 0.01},
        state=JobState.QUEUED,
        seq=1,
        created_at=now,
        updated_at=now,
        **owner,
    )


@database_sync_to_async
def bump(job: Job) -> None:
    """A new state of `job` (one seq on), published as a worker would."""
    job.seq += 1
    job.save(update_fields=["seq"])
    publish_job_change(job)


@database_sync_to_async
def revoke_all(user: Any) -> None:
    user.user_permissions.clear()


async def sign_in(live_server: LiveServer, user: Any) -> httpx.Cookies:
    """The session and csrftoken cookies of `user`, signed in through the login view."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=OPEN_TIMEOUT) as client:
        assert (await client.get("/accounts/login/")).status_code == 200
        response = await client.post(
            "/accounts/login/",
            data={"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        )
        assert response.status_code == 302, response.text
        assert "sessionid" in client.cookies
        return client.cookies


async def open_socket(live_server: LiveServer, path: str, cookies: httpx.Cookies) -> tuple[ClientConnection, Any]:
    socket = await connect(
        f"{live_server.ws_url}{path}",
        origin=Origin(live_server.url),
        additional_headers={"Cookie": f"sessionid={cookies['sessionid']}"},
        open_timeout=OPEN_TIMEOUT,
    )
    first = json.loads(await asyncio.wait_for(socket.recv(), OPEN_TIMEOUT))
    return socket, first


async def close_code_within(socket: ClientConnection, timeout: float) -> int | None:
    """Reads frames until the server closes; its code, or None if still open at the deadline."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await socket.recv()
    except ConnectionClosed:
        return socket.close_code
    except TimeoutError:
        return None


async def test_signing_out_closes_every_socket_4401_and_ends_the_event_stream(live_server: LiveServer) -> None:
    user = await make_user()
    cookies = await sign_in(live_server, user)
    job = await make_job(owner_user=user)

    job_socket, first = await open_socket(live_server, f"/ws/jobs/{job.id}/", cookies)
    assert first["type"] == "job" and first["job"]["id"] == str(job.id)
    owner_socket, snapshot = await open_socket(live_server, "/ws/jobs/", cookies)
    assert [payload["id"] for payload in snapshot["jobs"]] == [str(job.id)]

    async with (
        httpx.AsyncClient(base_url=live_server.url, cookies=cookies, timeout=None) as sse_client,
        sse_client.stream("GET", f"/api/jobs/{job.id}/events/") as events,
    ):
        assert events.status_code == 200
        lines = events.aiter_lines()
        assert (await asyncio.wait_for(anext(lines), OPEN_TIMEOUT)).startswith("id: ")

        async def read_to_the_end() -> None:
            async for _ in lines:
                pass

        sse_ended = asyncio.ensure_future(read_to_the_end())
        try:
            # Another device holding the same session signs it out.
            signed_out = time.monotonic()
            async with httpx.AsyncClient(base_url=live_server.url, cookies=cookies, timeout=OPEN_TIMEOUT) as other:
                response = await other.post("/accounts/logout/", data={"csrfmiddlewaretoken": cookies["csrftoken"]})
                assert response.status_code in (200, 302), response.text

            codes = await asyncio.gather(
                close_code_within(job_socket, END_TIMEOUT), close_code_within(owner_socket, END_TIMEOUT)
            )
            assert codes == [CLOSE_SIGNED_OUT, CLOSE_SIGNED_OUT]
            sockets_closed = time.monotonic() - signed_out
            await asyncio.wait_for(sse_ended, END_TIMEOUT - sockets_closed)
            sse_took = time.monotonic() - signed_out
            print(f"after sign-out: sockets closed in {sockets_closed:.2f} s, event stream ended in {sse_took:.2f} s")
        finally:
            sse_ended.cancel()
            await job_socket.close()
            await owner_socket.close()


async def test_losing_view_all_jobs_closes_the_staff_feed_within_5_s(live_server: LiveServer) -> None:
    watcher = await make_user(VIEW_ALL_JOBS)
    cookies = await sign_in(live_server, watcher)
    others_job = await make_job(owner_token=secrets.token_hex(16))
    feed, snapshot = await open_socket(live_server, "/ws/staff/jobs/", cookies)
    try:
        assert snapshot["type"] == "snapshot"
        await bump(others_job)  # with the right, another owner's changes reach the feed
        frame = json.loads(await asyncio.wait_for(feed.recv(), OPEN_TIMEOUT))
        assert frame["job"]["id"] == str(others_job.id)

        await revoke_all(watcher)
        revoked = time.monotonic()
        code: int | None = None
        while code is None and time.monotonic() - revoked < RIGHTS_DEADLINE:
            await bump(others_job)  # the other owner's job keeps changing meanwhile
            code = await close_code_within(feed, 0.2)
        took = time.monotonic() - revoked
        assert code == CLOSE_NOT_FOUND, f"the feed still open {took:.1f} s after the right was taken"
        assert took < RIGHTS_DEADLINE
        print(f"staff feed closed {took:.2f} s after jobs.view_all_jobs was removed")
        # Closed for good: no frame of the other owner's job reaches it any more.
        await bump(others_job)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(feed.recv(), 1.0)
    finally:
        await feed.close()
