"""The "Notify me" control in a real browser: a job ending while the tab is hidden shows one system
notification, which opens the job when clicked; a visible tab gets none.

Headless Chromium shows no notifications, so the context is granted the permission, an
init script spies on `Notification` (each one constructed, its title, body, tag and
onclick kept) and `document.visibilityState` answers what the test sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.test_browser import JOB_TIMEOUT, open_index, start_job

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

SPY_AND_VISIBILITY_JS = """
(() => {
  const Real = window.Notification;
  const seen = [];
  class SpyNotification extends Real {
    constructor(title, options = {}) {
      super(title, options);
      seen.push({ title, body: options.body, tag: options.tag, notification: this });
    }
  }
  window.Notification = SpyNotification;
  window.__notifications = seen;
  let visibility = "visible";
  Object.defineProperty(Document.prototype, "visibilityState", { configurable: true, get: () => visibility });
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => visibility === "hidden" });
  window.__setVisibility = (value) => {
    visibility = value;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""
SEEN_JS = "() => window.__notifications.map(({title, body, tag}) => ({title, body, tag}))"


@pytest.fixture
def notifying_page(browser: Browser, live_server: LiveServer) -> Iterator[Page]:
    context = browser.new_context()
    context.grant_permissions(["notifications"], origin=live_server.url)
    context.add_init_script(SPY_AND_VISIBILITY_JS)
    page = context.new_page()
    yield page
    context.close()


def turn_on(page: Page) -> None:
    button = page.locator("[data-notify-toggle]")
    expect(button).to_have_text("Notify me")
    button.click()
    expect(button).to_have_text("Notify me: on")
    expect(button).to_have_attribute("aria-pressed", "true")


def test_job_ending_in_a_hidden_tab_shows_one_notification_that_opens_the_job(
    live_server: LiveServer, worker: Any, notifying_page: Page
) -> None:
    page = notifying_page
    open_index(page, live_server)
    turn_on(page)
    assert page.evaluate("localStorage.getItem('jobstream.notify')") == "on"
    page.evaluate("window.__setVisibility('hidden')")

    job = start_job(page, "sleep", {"steps": 3, "step_seconds": 0.1})
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    page.wait_for_function("() => window.__notifications.length >= 1", timeout=JOB_TIMEOUT)
    seen = page.evaluate(SEEN_JS)
    assert seen == [{"title": "sleep succeeded", "body": "Click to open the job.", "tag": job["id"]}]

    page.evaluate("window.__notifications[0].notification.onclick()")
    page.wait_for_url(f"{live_server.url}/jobs/{job['id']}/", timeout=10_000)
    # The choice is remembered on the next page.
    expect(page.locator("[data-notify-toggle]")).to_have_text("Notify me: on")


def test_job_ending_in_a_visible_tab_shows_no_notification(
    live_server: LiveServer, worker: Any, notifying_page: Page
) -> None:
    page = notifying_page
    open_index(page, live_server)
    turn_on(page)

    job = start_job(page, "sleep", {"steps": 2, "step_seconds": 0.05})
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    expect(page.locator(".toast").first).to_be_visible()  # the end was announced, in the page only
    assert page.evaluate(SEEN_JS) == []


def test_notify_me_turned_off_shows_no_notification_in_a_hidden_tab(
    live_server: LiveServer, worker: Any, notifying_page: Page
) -> None:
    page = notifying_page
    open_index(page, live_server)
    expect(page.locator("[data-notify-toggle]")).to_have_text("Notify me")
    page.evaluate("window.__setVisibility('hidden')")

    job = start_job(page, "sleep", {"steps": 2, "step_seconds": 0.05})
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    assert page.evaluate(SEEN_JS) == []


def test_blocked_permission_shows_blocked(live_server: LiveServer, browser: Browser) -> None:
    context = browser.new_context()
    context.add_init_script("Object.defineProperty(Notification, 'permission', { get: () => 'denied' })")
    page = context.new_page()
    try:
        open_index(page, live_server)
        control = page.locator("[data-notify]")
        expect(control).to_have_attribute("data-notify-state", "blocked")
        expect(control.locator("[data-notify-toggle]")).to_be_disabled()
        expect(control.locator("[data-notify-note]")).to_contain_text("Blocked")
    finally:
        context.close()


def test_detail_page_notifies_the_end_of_its_job_in_a_hidden_tab(
    live_server: LiveServer, worker: Any, notifying_page: Page
) -> None:
    page = notifying_page
    open_index(page, live_server)
    job = start_job(page, "sleep", {"steps": 20, "step_seconds": 0.1, "fail_at_step": 15})
    page.goto(f"{live_server.url}{job['url']}")
    page.wait_for_function("() => window.jobstream !== undefined")
    turn_on(page)
    page.evaluate("window.__setVisibility('hidden')")

    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "failed", timeout=JOB_TIMEOUT)
    page.wait_for_function("() => window.__notifications.length >= 1", timeout=JOB_TIMEOUT)
    [seen] = page.evaluate(SEEN_JS)
    assert (seen["title"], seen["tag"]) == ("sleep failed", job["id"])
    assert "Failed at step 15" in seen["body"]
