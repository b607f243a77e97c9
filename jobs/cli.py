"""The terminal client behind `manage.py jobs submit|watch|list|cancel`.

`watch` is a transport on the follow seam (notifications/follow.py), like the job socket:
it joins the job's group before it reads the job, then shows every newer frame, the same
frames the browser gets, and reads the job again after the channel layer was away from
Redis, so a frame lost meanwhile cannot leave the bar hanging.

The job's log lines print above the bar as they come, as the socket sends them: after the
first state the kept lines (at most the last 500), then each new batch; a line at or
below the highest number shown is dropped, and lines missed on the way are read from the
database (docs/contract.md#job-logs).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from jobs.logs import LogFrame, LogLinePayload, LogPage
from jobs.models import TERMINAL_STATES, Job
from jobs.owners import Owner
from jobs.selectors import job_log_lines, job_log_tail
from jobs.serializers import JobFrame, JobPayload
from notifications.follow import job_follow, read_job
from notifications.messages import LayerLogMessage
from notifications.socket_db import socket_db

CLI_OWNER_TOKEN = "terminal"  # jobs submitted without --user; not hex, so no browser token can match it
HEAL_AFTER_SECONDS = 5.0  # quiet after which the terminal reads the job again: a bar must not hang on a lost frame
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}  # `jobs submit --watch` exits with these


def cli_owner() -> Owner:
    return Owner(token=CLI_OWNER_TOKEN)


def parse_params(pairs: list[str]) -> dict[str, str]:
    """`key=value` pairs as form-style text (the kind converts and checks each value)."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {pair!r} is not key=value (for example --param limit=5000000).")
        if key.strip() in params:
            raise ValueError(f"--param {key.strip()!r} is given twice.")
        params[key.strip()] = value.strip()
    return params


# --- watching ------------------------------------------------------------------------


async def follow(
    job_id: uuid.UUID, show: Callable[[JobPayload], None], log: LogView | None = None
) -> JobPayload | None:
    """Calls `show` with each newer state of the job until it is terminal, and `log` with
    its log lines; None if the job does not exist. The terminal is an operator's console:
    it sees jobs as staff do."""
    follow = job_follow(job_id, staff=True)
    try:
        payloads = await follow.open(functools.partial(read_job, job_id, staff=True))
        if not payloads:
            return None
        (current,) = payloads
        follow.shown(payloads)
        show(current)
        if log is not None:
            log.show_backfill(await socket_db(job_log_tail, job_id=job_id, after=log.highest))
            follow.shows_log(log.highest)  # from now on `next` gives the batches above it too
        while current["state"] not in TERMINAL_STATES:
            message = await follow.next(timeout=HEAL_AFTER_SECONDS)
            if message is None:
                await follow.heal()  # a frame lost on the way is never resent
                continue
            if message["type"] == "job.log":
                if log is not None:
                    await show_log_batch(job_id, log, message)
                continue
            frame: JobFrame = json.loads(message["text"])
            current = frame["job"]
            show(current)
        if log is not None:
            # The ended job's kept lines are all in the database: any line a full queue
            # dropped on the way shows before the end.
            log.show(await socket_db(job_log_lines, job_id=job_id, after=log.highest))
        return current
    finally:
        await follow.close()


async def show_log_batch(job_id: uuid.UUID, log: LogView, message: LayerLogMessage) -> None:
    """A batch of lines the Follow has not passed on before, after any it skipped: a
    batch cut to its newest lines, or one a full queue dropped. A batch is kept before it
    is published (jobs/services/logs.py), so the database holds those, if still kept."""
    if message["first"] > log.highest + 1:
        missing = message["first"] - log.highest - 1
        log.show(await socket_db(job_log_lines, job_id=job_id, after=log.highest, limit=missing))
    frame: LogFrame = json.loads(message["text"])
    log.show(frame["lines"])


LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}  # the word tells them apart too


@dataclass
class LogView:
    """Prints a job's log lines as `  17 │ INFO    text`, each once, in order: a line at or
    below the highest number printed is dropped. Colour only on a terminal (rich's own
    check); the level's word is always there."""

    console: Console
    job_id: uuid.UUID
    highest: int = 0

    def show(self, lines: list[LogLinePayload]) -> None:
        for line in lines:
            if line["n"] <= self.highest:
                continue
            self.highest = line["n"]
            style = LEVEL_STYLES.get(line["level"], "")
            text = Text.assemble(f"{line['n']:>5} │ ", (f"{line['level'].upper():<7} {line['text']}", style))
            self.console.print(text, soft_wrap=True, highlight=False)

    def show_backfill(self, page: LogPage) -> None:
        """The kept lines a watch starts with: the log's end, saying how much came before."""
        lines = [line for line in page["lines"] if line["n"] > self.highest]
        earlier = lines[0]["n"] - self.highest - 1 if lines else 0
        if earlier > 0:
            self.console.print(
                Text(f"… {earlier:,} earlier line(s): manage.py jobs log {self.job_id}", style="dim"),
                soft_wrap=True,
                highlight=False,
            )
            self.highest = lines[0]["n"] - 1
        self.show(lines)


@dataclass
class ProgressView:
    """A rich progress bar fed with job states: percent, message, rate, ETA, state."""

    console: Console
    progress: Progress | None = None
    task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[state]:<9}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f} %"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("job", total=None, state="", detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.progress is not None
        self.progress.__exit__(None, None, None)

    def show(self, job: JobPayload) -> None:
        assert self.progress is not None and self.task is not None
        progress = job["progress"]
        detail = ""
        total: float | None = None
        completed = 0.0
        if job["state"] == "queued" and job["queue_position"]:
            detail = f"{_ordinal(job['queue_position'])} in line"
        if progress is not None:
            total = progress["total"]
            completed = progress["current"] or 0.0
            parts = [progress["message"]]
            if progress["rate"]:
                parts.append(f"{progress['rate']:,.1f}/s")
            if progress["eta_seconds"] is not None and job["state"] == "running":
                parts.append(f"ETA {progress['eta_seconds']:,.0f} s")
            detail = " · ".join(part for part in parts if part)
        if job["state"] == "succeeded" and total is not None:
            completed = total
        self.progress.update(self.task, total=total, completed=completed, state=job["state"], detail=detail)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_end(job: JobPayload) -> str:
    """One line for a finished job: its result, or its error."""
    if job["state"] == "succeeded":
        result = json.dumps(job["result"]) if job["result"] is not None else "no result"
        file_note = f"; file at {job['result_url']}" if job["result_url"] else ""
        return f"succeeded: {result}{file_note}"
    if job["state"] == "failed":
        return f"failed: {job['error']}"
    return "cancelled"


def job_line(job: Job) -> str:
    percent = ""
    if job.has_progress and job.progress_total:
        percent = f"{100 * (job.progress_current or 0) / job.progress_total:5.1f} %"
    owner = (
        f"user {job.owner_user_id}"
        if job.owner_user_id
        else ("terminal" if job.owner_token == CLI_OWNER_TOKEN else "visitor")
    )
    return f"{job.id}  {job.kind:<10} {job.state:<9} {percent:>7}  {job.created_at:%Y-%m-%d %H:%M:%S}  {owner}"


def as_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, default=str)
