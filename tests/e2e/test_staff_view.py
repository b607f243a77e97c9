"""The staff live view in a real browser: every owner's queued and running jobs, live.

A staff member watches /staff/jobs/ while an anonymous visitor, in another browser
context, starts jobs on the one solo worker: the first runs, the others wait in line.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.accounts import VIEW_ALL_JOBS
from tests.e2e.test_browser import BAR_BETWEEN_JS, JOB_TIMEOUT, open_index, start_job

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "staff-pw-for-tests-only"


def make_user(username: str, *codenames: str, staff: bool) -> Any:
    from tests.accounts import user_with

    return user_with(username, *codenames, is_staff=staff, password=PASSWORD)


def sign_in(page: Page, live_server: LiveServer, username: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/?next=/staff/jobs/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form button[type=submit], form input[type=submit]").first.click()


def test_staff_view_shows_every_owners_jobs_live_with_places_in_line(
    live_server: LiveServer, worker: Any, page: Page, browser: Browser
) -> None:
    make_user("watcher", VIEW_ALL_JOBS, staff=True)
    sign_in(page, live_server, "watcher")
    expect(page).to_have_url(f"{live_server.url}/staff/jobs/")
    expect(page.locator("[data-connection]")).to_have_text("live", timeout=10_000)
    succeeded_before = int(page.locator('[data-count="succeeded"]').inner_text())

    visitor_context = browser.new_context()
    try:
        visitor = visitor_context.new_page()
        open_index(visitor, live_server)
        running = start_job(visitor, "sleep", {"steps": 40, "step_seconds": 0.1})
        second = start_job(visitor, "sleep", {"steps": 1, "step_seconds": 0})
        third = start_job(visitor, "sleep", {"steps": 1, "step_seconds": 0})

        row = page.locator(f'tr[data-job-id="{running["id"]}"]')
        expect(row.locator(".badge")).to_have_text("running", timeout=JOB_TIMEOUT)
        page.wait_for_function(BAR_BETWEEN_JS, arg=f'tr[data-job-id="{running["id"]}"] [role=progressbar]')
        expect(page.locator(f'tr[data-job-id="{second["id"]}"] .staff-row__line')).to_have_text("1st in line")
        expect(page.locator(f'tr[data-job-id="{third["id"]}"] .staff-row__line')).to_have_text("2nd in line")

        # When the first ends, the line moves up and the counts follow.
        expect(row.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
        expect(page.locator('[data-count="succeeded"]')).not_to_have_text(str(succeeded_before), timeout=JOB_TIMEOUT)
        for job in (second, third):
            expect(page.locator(f'tr[data-job-id="{job["id"]}"]')).to_have_count(0, timeout=JOB_TIMEOUT)
        expect(page.locator('[data-count="succeeded"]')).to_have_text(str(succeeded_before + 3), timeout=JOB_TIMEOUT)
        expect(page.locator("[data-empty]")).to_be_visible(timeout=JOB_TIMEOUT)
    finally:
        visitor_context.close()


def test_staff_view_does_not_exist_for_others(live_server: LiveServer, page: Page) -> None:
    response = page.goto(f"{live_server.url}/staff/jobs/")
    assert response is not None
    assert page.url.startswith(f"{live_server.url}/accounts/login/"), "anonymous visitors are sent to sign in"

    make_user("clerk", staff=True)  # the flag alone: no jobs.view_all_jobs
    sign_in(page, live_server, "clerk")
    response = page.goto(f"{live_server.url}/staff/jobs/")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("link", name="Live view")).to_have_count(0)

    # The staff socket closes 4404 for a signed-in user without jobs.view_all_jobs.
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    assert _staff_socket_close_code(live_server, cookies["sessionid"]) == 4404


def _staff_socket_close_code(live_server: LiveServer, session_id: str) -> int | None:
    # The sync client: Playwright's sync API already runs an event loop in this thread.
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(  # type: ignore[call-overload,unused-ignore]
        f"{live_server.ws_url}/ws/staff/jobs/",
        origin=live_server.url,
        additional_headers={"Cookie": f"sessionid={session_id}"},
    ) as socket:
        with contextlib.suppress(ConnectionClosed):
            socket.recv(timeout=10)
        return socket.close_code
