"""The "Run again" and "Edit and run" buttons in a real browser: daphne, a Celery worker, Redis and
Chromium, nothing mocked. A job ends live, Run again makes a new job that runs to success,
Edit and run fills the form with the job's parameters and its submit makes another; a
refused Run again says why in a toast."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Page, expect

from jobs.models import Job
from tests.e2e.test_browser import JOB_TIMEOUT, first_card, open_index, start_job, submit_form

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)


def test_run_again_and_edit_and_run_make_new_jobs_that_run_to_success(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    submit_form(page, "sleep", steps=3, step_seconds=0.05)
    first = first_card(page)
    first_id = first.get_attribute("data-job-id")
    expect(first).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)

    # Drawn live by render.js when the job ended: the page was not reloaded.
    again = first.get_by_role("button", name="Run again")
    expect(again).to_be_visible()
    again.click()
    cards = page.locator("#jobs article.job")
    expect(cards).to_have_count(2, timeout=10_000)
    second = cards.first
    assert second.get_attribute("data-job-id") != first_id
    expect(second.locator(".job__params")).to_contain_text("steps 3")
    expect(second.locator(".job__params")).to_contain_text("step_seconds 0.05")
    expect(second).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)

    page.locator(f"#job-{first_id}").get_by_role("link", name="Edit and run").click()
    expect(page).to_have_url(re.compile(rf"/\?edit={first_id}#job-form$"))
    page.wait_for_function("() => window.jobstream !== undefined")
    expect(page.locator("select[name=kind]")).to_have_value("sleep")
    expect(page.locator("input[name='sleep-steps']")).to_have_value("3")
    expect(page.locator("input[name='sleep-step_seconds']")).to_have_value("0.05")
    expect(page.locator("[data-editing]")).to_contain_text("sleep job")
    page.fill("input[name='sleep-steps']", "4")
    page.get_by_role("button", name="Start").click()

    expect(cards).to_have_count(3, timeout=10_000)
    third = cards.first
    expect(third.locator(".job__params")).to_contain_text("steps 4")
    expect(third.locator(".job__params")).to_contain_text("step_seconds 0.05")
    expect(third).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    assert Job.objects.count() == 3


def test_run_again_on_a_jobs_page_goes_to_the_new_job(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 1, "step_seconds": 0})
    page.goto(f"{live_server.url}/jobs/{job['id']}/")
    card = page.locator(f"#job-{job['id']}")
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)

    card.get_by_role("button", name="Run again").click()

    expect(page).not_to_have_url(re.compile(rf"/jobs/{job['id']}/$"), timeout=10_000)
    new = page.locator("[data-job-detail] article.job")
    expect(new).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    assert new.get_attribute("data-job-id") != job["id"]


def test_a_refused_run_again_says_why_in_a_toast_and_can_be_clicked_again(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 1, "step_seconds": 0})
    card = page.locator(f"#job-{job['id']}")
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    Job.objects.filter(pk=job["id"]).update(params={"steps": 0, "step_seconds": 0})  # no longer passes

    card.get_by_role("button", name="Run again").click()

    toast = page.locator("#toasts .toast[role=alert]")
    expect(toast).to_contain_text("steps:", timeout=10_000)
    expect(card.get_by_role("button", name="Run again")).to_be_enabled()
    assert Job.objects.count() == 1
