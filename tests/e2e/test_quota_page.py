"""The quota error on the page, in a real browser: the form's script posts to the API,
gets a 429, and shows its message above the form (daphne, Redis, Chromium)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import override_settings
from django.utils import timezone
from playwright.sync_api import Page, expect

from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)


def test_form_over_the_active_quota_shows_the_quota_message_and_starts_nothing(
    live_server: LiveServer, live_server_env: dict[str, str], page: Page
) -> None:
    limit = settings.JOB_QUOTA_ACTIVE  # the live daphne reads the same environment
    if not limit:
        pytest.skip("JOB_QUOTA_ACTIVE=0 in this environment: the quota is off")
    page.goto(f"{live_server.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    session_key = next(c["value"] for c in page.context.cookies() if c["name"] == "sessionid")
    with override_settings(SECRET_KEY=live_server_env["SECRET_KEY"]):  # the live server signs sessions with its own
        token = SessionStore(session_key=session_key)[SESSION_OWNER_KEY]
    now = timezone.now()
    Job.objects.bulk_create(
        Job(owner_token=token, kind="sleep", params={}, state=JobState.RUNNING, seq=1, created_at=now, updated_at=now)
        for _ in range(limit)
    )

    page.select_option("select[name=kind]", "sleep")
    page.fill("input[name='sleep-steps']", "1")
    page.get_by_role("button", name="Start").click()

    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(
        f"You have {limit} jobs queued or running, the most allowed at once ({limit}); "
        "wait for one to end or cancel one."
    )
    assert Job.objects.filter(owner_token=token).count() == limit
