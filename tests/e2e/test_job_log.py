"""The job page's log panel in a real browser (issue 14, item 5): a running job's lines
stream onto its page; a daphne restart mid-job leaves no line twice and none missing;
a page opened after 500 lines reads the older ones over HTTP; filter by text and level;
the download is the whole kept log.

A daphne of the test's own (the session's `live_server` is shared, so nothing may kill
it), a real worker, and the `sleep` kind, which writes a line as it starts and one per
step (and an error line at `fail_at_step`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from jobs.models import Job
from tests.e2e.test_browser import start_job
from tests.live_daphne import DaphneProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

JOB_TIMEOUT = 30_000  # ms for the page to show the end: the restart, the reconnect's backoff, the job
LINES_JS = "() => [...document.querySelectorAll('.log__line')].map((row) => Number(row.dataset.n))"
VISIBLE_JS = "() => [...document.querySelectorAll('.log__line')].filter((row) => !row.hidden).map((row) => row.id)"


# Before the page's script: the URL of every WebSocket the page opens, to see where each resumed.
RECORD_SOCKETS_JS = """
window.__sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(url, ...rest) { super(url, ...rest); window.__sockets.push(String(url)); }
};
"""


@pytest.fixture
def daphne(live_server_env: dict[str, str], tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(env=live_server_env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def kept_lines(page: Page, base: str, job_id: str) -> list[dict[str, Any]]:
    """Every kept line of the job, read page by page from the API as the page's visitor."""
    lines: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = page.request.get(f"{base}/api/jobs/{job_id}/log/?after={after}")
        assert response.ok, response.text()
        body = response.json()
        lines += body["lines"]
        after = body["next"]
    return lines


def panel_lines(page: Page) -> list[int]:
    shown: list[int] = page.evaluate(LINES_JS)
    return shown


def assert_panel_shows_every_kept_line_once(page: Page, base: str, job_id: str) -> list[dict[str, Any]]:
    job = Job.objects.get(pk=job_id)
    kept = kept_lines(page, base, job_id)
    numbers = [line["n"] for line in kept]
    assert numbers == list(range(1, len(kept) + 1)), "the job keeps every line here (no JOB_LOG_MAX_LINES cut)"
    page.wait_for_function(f"() => document.querySelectorAll('.log__line').length >= {len(kept)}", timeout=JOB_TIMEOUT)
    shown = panel_lines(page)
    twice = sorted({n for n in shown if shown.count(n) > 1})[:10]
    missing = sorted(set(numbers) - set(shown))[:10]
    assert shown == numbers, f"panel {len(shown)} lines, kept {len(kept)}: twice {twice}, missing {missing}"
    assert job.state in {"succeeded", "failed"}
    return kept


def open_job(page: Page, daphne: DaphneProcess, params: dict[str, Any], *, hash: str = "") -> dict[str, Any]:
    page.goto(f"{daphne.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    job = start_job(page, "sleep", params)
    page.goto(f"{daphne.url}/jobs/{job['id']}/{hash}")
    return job


def test_log_streams_live_and_survives_a_daphne_restart_with_no_line_twice_or_missing(
    daphne: DaphneProcess, worker: Any, page: Page
) -> None:
    page.add_init_script(RECORD_SOCKETS_JS)
    job = open_job(page, daphne, {"steps": 60, "step_seconds": 0.15})  # 9 s: lines before and after the kill
    card = page.locator(f"#job-{job['id']}")
    connection = page.locator("[data-connection]")
    expect(card).to_have_attribute("data-state", "running", timeout=JOB_TIMEOUT)
    page.wait_for_function("() => document.querySelectorAll('.log__line').length >= 5", timeout=JOB_TIMEOUT)
    assert Job.objects.get(pk=job["id"]).state == "running", "lines showed live, while the job runs"
    expect(page.locator(".log__count")).not_to_have_text("")

    daphne.kill()
    expect(connection).to_have_text("reconnecting…")
    before = panel_lines(page)
    assert wait_until(lambda: Job.objects.get(pk=job["id"]).log_total >= max(before) + 3, timeout=JOB_TIMEOUT / 1000)
    daphne.start()

    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    kept = assert_panel_shows_every_kept_line_once(page, daphne.url, job["id"])
    assert len(kept) > len(before), "lines written after the restart came in too"
    urls = page.evaluate("window.__sockets")
    assert urls[0].endswith("?log_after=0") and len(urls) >= 2
    resumed_at = int(urls[-1].rsplit("log_after=", 1)[1])
    assert resumed_at >= max(before), f"the reconnect resumed at {resumed_at}, below the {max(before)} shown"
    print(f"\nbefore the kill {len(before)} lines, resumed at {resumed_at}, at the end {len(kept)}")  # pytest -s
    assert page.evaluate("window.jobstream.transport") == "ws"
    expect(page.locator(".log__count")).to_have_text(f"{len(kept)} lines")
    expect(page.locator(".log__notice")).to_be_hidden()


def test_a_page_opened_past_the_backfill_reads_the_older_lines_over_http(
    daphne: DaphneProcess, worker: Any, page: Page
) -> None:
    page.goto(f"{daphne.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    job = start_job(page, "sleep", {"steps": 900, "step_seconds": 0.01})
    # Open the page once more lines are kept than a socket's backfill carries (500).
    assert wait_until(lambda: Job.objects.get(pk=job["id"]).log_total > 600, timeout=JOB_TIMEOUT / 1000, interval=0.1)
    page.goto(f"{daphne.url}/jobs/{job['id']}/")
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    assert_panel_shows_every_kept_line_once(page, daphne.url, job["id"])


def test_filter_by_text_and_level_link_a_line_and_download_the_whole_log(
    daphne: DaphneProcess, worker: Any, page: Page
) -> None:
    job = open_job(page, daphne, {"steps": 30, "step_seconds": 0.01, "fail_at_step": 25})
    expect(page.locator(f"#job-{job['id']}")).to_have_attribute("data-state", "failed", timeout=JOB_TIMEOUT)
    kept = assert_panel_shows_every_kept_line_once(page, daphne.url, job["id"])
    errors = [f"L{line['n']}" for line in kept if line["level"] == "error"]
    assert errors, "the failing step wrote an error line"

    # A finished job's page opened at #L3: its log is read over HTTP, line 3 marked.
    page.goto(f"{daphne.url}/jobs/{job['id']}/#L3")
    expect(page.locator("#L3")).to_have_class(re.compile(r"\blog__line--target\b"), timeout=JOB_TIMEOUT)
    page.wait_for_function(f"() => document.querySelectorAll('.log__line').length === {len(kept)}")

    search = page.get_by_placeholder("Filter lines")
    search.fill("STEP 2")
    wanted = [f"L{line['n']}" for line in kept if "step 2" in line["text"].lower()]
    assert len(wanted) > 1
    page.wait_for_function(f"() => ({VISIBLE_JS})().length === {len(wanted)}")
    assert page.evaluate(VISIBLE_JS) == wanted

    search.fill("")
    page.get_by_role("button", name="Info").click()
    page.wait_for_function(f"() => ({VISIBLE_JS})().length === {len(errors)}")
    assert page.evaluate(VISIBLE_JS) == errors
    expect(page.locator("#L3")).to_be_hidden()
    page.get_by_role("button", name="Info").click()
    page.wait_for_function(f"() => ({VISIBLE_JS})().length === {len(kept)}")

    whole = page.request.get(f"{daphne.url}/api/jobs/{job['id']}/log.txt")
    assert whole.ok and whole.headers["content-type"].startswith("text/plain")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download log").click()
    downloaded = Path(download_info.value.path()).read_text(encoding="utf-8")
    assert downloaded == whole.text()
    assert downloaded.splitlines() == [f"{line['t']} {line['level'].upper()} {line['text']}" for line in kept]
