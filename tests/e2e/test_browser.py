"""The pages in a real browser: daphne, a Celery worker, Redis and Chromium, nothing mocked.

Each test starts from a fresh browser context (a new anonymous visitor) and waits with
Playwright's deadlines, never a bare sleep.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

JOB_TIMEOUT = 30_000  # ms: a short job, queued behind at most one other on the solo worker

START_JOB_JS = """
async ([kind, params]) => {
  const token = (document.cookie.match(/(?:^|;\\s*)csrftoken=([^;]+)/) || [])[1] || "";
  const response = await fetch("/api/jobs/", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRFToken": token},
    body: JSON.stringify({kind, params}),
  });
  if (response.status !== 201) throw new Error(`${response.status}: ${await response.text()}`);
  return response.json();
}
"""

BAR_BETWEEN_JS = """
(selector) => {
  const bar = document.querySelector(selector);
  const value = Number(bar && bar.getAttribute("aria-valuenow"));
  return value > 0 && value < 100;
}
"""


def open_index(page: Page, live_server: LiveServer, query: str = "") -> None:
    page.goto(f"{live_server.url}/{query}")
    page.wait_for_function("() => window.jobstream !== undefined")  # the module ran


def submit_form(page: Page, kind: str, **params: float) -> None:
    page.select_option("select[name=kind]", kind)
    for name, value in params.items():
        page.fill(f"input[name='{kind}-{name}']", str(value))
    page.get_by_role("button", name="Start").click()


def first_card(page: Page) -> Locator:
    card = page.locator("#jobs article.job").first
    expect(card).to_be_visible(timeout=10_000)
    return card


def start_job(page: Page, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Starts a job through the JSON API as the page's visitor (page must be on the site)."""
    job: dict[str, Any] = page.evaluate(START_JOB_JS, [kind, params])
    return job


# --- the form and live cards -----------------------------------------------------


def test_started_job_appears_and_progresses_live_without_reload(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    url = page.url
    page.evaluate("window.__marker = 'same page'")

    submit_form(page, "sleep", steps=20, step_seconds=0.1)
    card = first_card(page)
    card_id = card.get_attribute("id")
    assert card_id and card_id.startswith("job-")

    page.wait_for_function(BAR_BETWEEN_JS, arg=f"#{card_id} [role=progressbar]", timeout=JOB_TIMEOUT)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    bar = card.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(bar).to_have_attribute("data-percent", "100")
    assert page.evaluate("window.__marker") == "same page"
    assert page.url == url


def test_report_result_downloads_as_csv(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    submit_form(page, "report", rows=5000)
    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)

    with page.expect_download() as download_info:
        card.get_by_role("link", name="Download result").click()
    path = download_info.value.path()
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 5001
    assert lines[0] == "order_id,date,region,product,quantity,unit_price,total"


def test_out_of_range_param_shows_error_next_to_field_and_creates_no_job(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    submit_form(page, "sleep", steps=0)

    error = page.locator("[data-error-for='sleep-steps']")
    expect(error).to_be_visible()
    expect(error).to_contain_text("between")
    expect(page.locator("#sleep-steps, [name='sleep-steps']").first).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#jobs article.job")).to_have_count(0)
    listing = page.request.get(f"{live_server.url}/api/jobs/").json()
    assert listing["count"] == 0


def test_failing_job_shows_failed_state_and_error(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    submit_form(page, "sleep", steps=10, step_seconds=0.05, fail_at_step=3)
    card = first_card(page)

    expect(card).to_have_attribute("data-state", "failed", timeout=JOB_TIMEOUT)
    expect(card.locator(".job__error")).to_contain_text("Failed at step 3")
    expect(card.locator(".badge")).to_have_text("Failed")


# --- the detail page -------------------------------------------------------------


def test_detail_page_shows_live_progress_until_succeeded(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 20, "step_seconds": 0.1})
    page.goto(f"{live_server.url}/jobs/{job['id']}/")

    card = page.locator(f"#job-{job['id']}")
    expect(card.get_by_role("heading", name="sleep")).to_be_visible()
    page.wait_for_function(BAR_BETWEEN_JS, arg=f"#job-{job['id']} [role=progressbar]", timeout=JOB_TIMEOUT)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(card.locator(".job__result")).to_contain_text("steps")


def test_cancel_button_on_detail_page_cancels_running_job(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 200, "step_seconds": 0.1})
    page.goto(f"{live_server.url}/jobs/{job['id']}/")

    card = page.locator(f"#job-{job['id']}")
    expect(card).to_have_attribute("data-state", "running", timeout=JOB_TIMEOUT)
    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-state", "cancelled", timeout=JOB_TIMEOUT)
    expect(card.get_by_role("button", name="Cancel")).to_have_count(0)


# --- fallbacks -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_fallback_transport_follows_job_to_succeeded(
    live_server: LiveServer, worker: Any, page: Page, transport: str
) -> None:
    open_index(page, live_server, f"?transport={transport}")
    assert page.evaluate("window.jobstream.transport") == transport

    submit_form(page, "sleep", steps=5, step_seconds=0.1)
    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")


# Before the module runs: every WebSocket dials a port where nothing listens.
BROKEN_WEBSOCKET_JS = """
window.WebSocket = class extends window.WebSocket {
  constructor() { super("ws://127.0.0.1:9/"); }
};
"""


def test_repeated_websocket_failures_fall_back_to_sse(live_server: LiveServer, worker: Any, page: Page) -> None:
    page.add_init_script(BROKEN_WEBSOCKET_JS)
    open_index(page, live_server)
    page.wait_for_function("window.jobstream.transport === 'sse'", timeout=15_000)

    submit_form(page, "sleep", steps=5, step_seconds=0.1)
    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)


# --- safety ----------------------------------------------------------------------


def test_job_text_is_rendered_as_text_not_html(live_server: LiveServer, worker: Any, page: Page) -> None:
    open_index(page, live_server)
    payload = "<img src=x onerror=window.__xss=1>"
    page.evaluate(
        """(payload) => window.jobstream.apply({
          id: "xss-test", kind: "sleep", params: {steps: payload}, state: "failed", seq: 1,
          progress: {current: 1, total: 2, percent: 50, message: payload, rate: null, eta_seconds: null},
          result: {[payload]: payload}, result_url: null, error: payload, queue_position: null,
          created_at: "2026-01-01T00:00:00Z", started_at: null, finished_at: null,
          updated_at: "2026-01-01T00:00:00Z", url: "/jobs/xss-test/",
        })""",
        payload,
    )
    card = page.locator("#job-xss-test")
    expect(card.locator(".job__message")).to_have_text(payload)
    expect(card.locator(".job__error")).to_have_text(payload)
    expect(card.locator("img")).to_have_count(0)
    assert page.evaluate("window.__xss") is None


def test_other_visitor_gets_404_for_my_job(live_server: LiveServer, worker: Any, page: Page, browser: Browser) -> None:
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 1, "step_seconds": 0})
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)

    other = browser.new_context()
    try:
        stranger = other.new_page()
        response = stranger.goto(f"{live_server.url}/jobs/{job['id']}/")
        assert response is not None
        assert response.status == 404
        expect(stranger.get_by_role("heading", name="Nothing here")).to_be_visible()
        assert stranger.request.get(f"{live_server.url}/api/jobs/{job['id']}/").status == 404
    finally:
        other.close()
