"""The worker side of a job's log: what `report.log()` writes, batched, kept, then published.

`report.log()` only appends to the run's queue (a clock read, a split and an append: no
lock, no I/O), so a kind that logs in a tight loop is not slowed by the database or Redis.
One thread per process (`LogFlusher`) takes each run's waiting lines every
1 / PROGRESS_MAX_RATE seconds: it keeps them in the database (jobs/services/logs.py, which
numbers them) and then publishes them in one `log` frame to the job's group, so a job
sends at most PROGRESS_MAX_RATE log frames a second, and every line a stream was sent is
already in the database. The run's end takes what is left (`JobLogWriter.close`) before
its terminal write, so every line comes before the terminal frame.

A forked child (Celery's prefork pool) starts a thread of its own on first use, as the
heartbeat does (jobs/heartbeat.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection

from jobs.logs import LOG_LEVELS, LogLevel, level_checked, line_payload, log_frame_text, newest_that_fit, text_lines
from jobs.services.logs import PendingLine, job_log_append
from notifications.groups import job_group
from notifications.publish import publish_log

logger = logging.getLogger(__name__)

RETRY_LINES_MAX = 10_000  # lines a run holds while the database refuses them, at most (the newest are kept)


class JobLogWriter:
    """One run's log: lines queued by the kind's thread, kept and published by the flusher's."""

    def __init__(self, *, job_id: uuid.UUID, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.group = job_group(job_id)
        self._queued: deque[tuple[float, LogLevel, str]] = deque()  # append and popleft need no lock
        self._flush_lock = threading.Lock()  # one batch at a time: lines leave in order
        self._unkept: list[PendingLine] = []  # a batch the database refused, tried again first
        self.closed = False

    def log(self, text: object, level: str = "info") -> None:
        """`report.log()`: queues the text's lines."""
        if level not in LOG_LEVELS:
            level_checked(level)  # raises, naming the levels
        at = time.time()
        queued = self._queued
        for line in text_lines(text):
            queued.append((at, level, line))  # type: ignore[arg-type]

    @property
    def pending(self) -> bool:
        return bool(self._queued or self._unkept)

    def flush(self) -> None:
        """Keeps and publishes every line queued so far (the flusher, and the run's end)."""
        with self._flush_lock:
            batch = self._unkept
            self._unkept = []
            queued = self._queued
            for _ in range(len(queued)):
                at, level, text = queued.popleft()
                batch.append(PendingLine(t=datetime.fromtimestamp(at, tz=UTC), level=level, text=text))
            if not batch:
                return
            try:
                appended = job_log_append(job_id=self.job_id, attempt=self.attempt, lines=batch)
            except Exception:
                self._unkept = batch[-RETRY_LINES_MAX:]
                raise
            if appended is None:  # the run was ended or replaced: its lines are not the job's
                return
            lines = newest_that_fit([line_payload(line) for line in appended.lines])
            if not lines:
                return
            text = log_frame_text(lines, total=appended.total, dropped=appended.dropped)
            publish_log(
                [self.group],
                str(self.job_id),
                first=lines[0]["n"],
                last=lines[-1]["n"],
                text=text,
            )

    def close(self) -> None:
        """The run ends: what is left is kept and published now, before its terminal write."""
        flusher.discard(self)
        self.closed = True
        try:
            self.flush()
        except Exception:
            logger.exception("job %s: its last log lines could not be kept", self.job_id)


class LogFlusher:
    """The process's thread that keeps and publishes every run's waiting lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._writers: set[JobLogWriter] = set()
        os.register_at_fork(after_in_child=self._after_fork)

    def add(self, writer: JobLogWriter) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="jobstream-log-flusher", daemon=True).start()
            self._writers.add(writer)

    def discard(self, writer: JobLogWriter) -> None:
        with self._lock:
            self._writers.discard(writer)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._writers = set()
        self._pid = None

    def _run(self) -> None:
        stop = threading.Event()  # never set: waits without a bare sleep, for the interval
        interval = 1.0 / settings.PROGRESS_MAX_RATE if settings.PROGRESS_MAX_RATE > 0 else 0.1
        connected = False
        while not stop.wait(interval):
            with self._lock:
                running = bool(self._writers)
                writers = [writer for writer in self._writers if writer.pending]
            for writer in writers:
                connected = True
                try:
                    writer.flush()
                except Exception:
                    logger.warning("job %s: keeping its log lines failed; retrying", writer.job_id, exc_info=True)
                    connection.close()  # a fresh connection for the next try
            if connected and not running:
                # This thread's own connection, kept while jobs run here: one kept open while
                # none does would hold a PostgreSQL slot for nothing (and stop a test database's drop).
                connection.close()
                connected = False


flusher = LogFlusher()


def log_writer_for(*, job_id: uuid.UUID, attempt: int) -> JobLogWriter:
    """A run's log writer, flushed by the process's thread until `close()`."""
    writer = JobLogWriter(job_id=job_id, attempt=attempt)
    flusher.add(writer)
    return writer
