"""A terminal frame that never arrives (issue 5, fault 5): the page still ends on the
job's true state, because a job that hears nothing for STREAM_RESYNC_SECONDS is
re-read over HTTP.

The frame is lost for real: the job's end is written through the service that writes
terminal states (`job_finish`), in this process, with the publisher told to drop what
it is handed. The page's daphne runs with STREAM_RESYNC_SECONDS=1 so the test is short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import Page, expect

from jobs.models import Job, JobState
from jobs.services import job_finish
from notifications.publish import publisher
from tests.live_daphne import DaphneProcess, session_owner_token

pytestmark = pytest.mark.django_db(transaction=True)

RESYNC_SECONDS = 1  # the page's silence before it re-reads (the default is 15)
HEAL_TIMEOUT = 10_000  # ms: the silence, the check interval and one GET, with room to spare


@pytest.fixture
def daphne(live_server_env: dict[str, str], tmp_path: Path) -> Iterator[DaphneProcess]:
    env = {**live_server_env, "STREAM_RESYNC_SECONDS": str(RESYNC_SECONDS)}
    server = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def running_job_of(page: Page, daphne: DaphneProcess) -> Job:
    """A job of the page's visitor, running (as a worker would have left it), at 40 %."""
    sessionid = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "sessionid")
    now = timezone.now()
    return Job.objects.create(
        owner_token=session_owner_token(sessionid=sessionid, env=daphne.env),
        kind="sleep",
        params={"steps": 10, "step_seconds": 1},
        state=JobState.RUNNING,
        seq=5,
        has_progress=True,
        progress_current=4,
        progress_total=10,
        progress_message="step 4 of 10",
        created_at=now,
        started_at=now,
        updated_at=now,
    )


@pytest.mark.parametrize(
    ("where", "count"),
    [
        ("detail", 1),
        ("index", 1),  # re-read with GET /api/jobs/<id>/
        ("index", 3),  # several silent at once: re-read with one GET /api/jobs/
    ],
)
def test_page_ends_on_the_true_state_when_the_terminal_frame_is_lost(
    daphne: DaphneProcess, page: Page, monkeypatch: pytest.MonkeyPatch, where: str, count: int
) -> None:
    # Every request from the start: with a 1 s silence the page re-reads running jobs
    # before they end too, and one such read may be in flight when they do.
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url.removeprefix(daphne.url)))
    page.goto(f"{daphne.url}/")
    jobs = [running_job_of(page, daphne) for _ in range(count)]
    page.goto(f"{daphne.url}/jobs/{jobs[0].id}/" if where == "detail" else f"{daphne.url}/")
    page.wait_for_function("() => window.jobstream !== undefined")
    assert page.evaluate("document.body.dataset.streamResyncSeconds") == str(RESYNC_SECONDS)
    cards = [page.locator(f"#job-{job.id}") for job in jobs]
    for card in cards:
        expect(card).to_have_attribute("data-state", "running")
    expect(page.locator("[data-connection]")).to_have_text("live")  # the socket is open, and stays so

    swallowed: list[tuple[Any, ...]] = []
    monkeypatch.setattr(publisher, "send_job_frame", lambda *args: swallowed.append(args))
    with transaction.atomic():  # all at once: a re-read in flight sees all of them ended, or none
        ends = [
            job_finish(job_id=job.id, state=JobState.SUCCEEDED, seq_above=job.seq, result={"steps": 10}) for job in jobs
        ]
    assert all(end is not None and end.is_terminal for end in ends)
    lost = [(message["job_id"], message["seq"]) for _, message in swallowed]
    assert lost == [(str(end.id), end.seq) for end in ends if end], "the terminal frames were not the ones lost"

    ended = time.monotonic()
    for card in cards:
        expect(card).to_have_attribute("data-state", "succeeded", timeout=HEAL_TIMEOUT)
        expect(card.locator(".job__result")).to_contain_text("steps")
    print(f"{where}, {count} job(s): healed {time.monotonic() - ended:.2f} s after the lost frame")  # pytest -s
    assert page.evaluate("window.jobstream.transport") == "ws"
    one_each = {f"/api/jobs/{job.id}/" for job in jobs}
    if count == 1:
        assert one_each <= set(asked), asked
    else:
        # Several silent at once are re-read with a list request, not one GET each (a job
        # whose silence began a millisecond earlier may still be read on its own).
        assert any(url.startswith("/api/jobs/?") for url in asked) and not one_each <= set(asked), asked
