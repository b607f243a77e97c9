"""The web process restarted under an open page (issue 5, fault 3).

A daphne of the test's own (the session's `live_server` is shared, so nothing may
kill it) serves a page following a job that a real worker runs; the test SIGKILLs
daphne, starts a new one on the same port, and the page must end on the job's true
final state (the database's), still over WebSocket: a server that is away is waited
for, not taken for a network that refuses WebSockets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from jobs.models import Job
from tests.e2e.test_browser import start_job
from tests.live_daphne import DaphneProcess

pytestmark = pytest.mark.django_db(transaction=True)

JOB = {"steps": 40, "step_seconds": 0.2}  # 8 s: running before the kill, after the restart too
JOB_TIMEOUT = 30_000  # ms for the page to show the end: the restart, the reconnect's backoff, the job


@pytest.fixture
def daphne(live_server_env: dict[str, str], tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(env=live_server_env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


# Before the page's script: counts the WebSockets it opens, so the test can wait for
# the page to have tried (and failed) a number of times while daphne is away.
COUNT_SOCKETS_JS = """
window.__sockets = 0;
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.__sockets += 1; }
};
"""


@pytest.mark.parametrize(
    ("where", "failed_attempts"),
    [
        ("detail", 0),  # started again at once
        ("index", 0),
        # Away long enough for the page to fail several reconnects: it must keep to
        # WebSocket (the server is away, not WebSockets refused), not fall back to SSE.
        ("detail", 4),
    ],
)
def test_page_ends_on_the_true_state_after_daphne_is_killed_and_started_again(
    daphne: DaphneProcess, worker: Any, page: Page, where: str, failed_attempts: int
) -> None:
    page.add_init_script(COUNT_SOCKETS_JS)
    page.goto(f"{daphne.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    job = start_job(page, "sleep", JOB)
    if where == "detail":
        page.goto(f"{daphne.url}/jobs/{job['id']}/")
    card = page.locator(f"#job-{job['id']}")
    connection = page.locator("[data-connection]")
    expect(card).to_have_attribute("data-state", "running", timeout=JOB_TIMEOUT)
    expect(connection).to_have_text("live")

    daphne.kill()
    expect(connection).to_have_text("reconnecting…")
    opened = page.evaluate("window.__sockets")
    page.wait_for_function(
        f"window.__sockets >= {opened + failed_attempts} || window.jobstream.transport !== 'ws'", timeout=JOB_TIMEOUT
    )
    assert page.evaluate("window.jobstream.transport") == "ws", "the page gave up on WebSocket while daphne was away"
    daphne.start()
    back = time.time()

    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    shown = time.time()
    truth = Job.objects.get(pk=job["id"])
    assert truth.state == "succeeded" and truth.finished_at is not None
    # The figure (pytest -s): from daphne answering again, or the job's end if later.
    print(f"{where}: true state shown {shown - max(back, truth.finished_at.timestamp()):.2f} s after it could be")
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(card.locator(".job__result")).to_contain_text("steps")
    assert page.evaluate("window.jobstream.transport") == "ws"
    if where == "index":  # the owner socket stays open: it is live again
        expect(connection).to_have_text("live")
