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

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection

from jobs.logs import (
    FRAME_MAX_BYTES,
    LOG_LEVELS,
    LogLevel,
    level_checked,
    line_payload,
    log_frame_text,
    text_lines,
)
from jobs.services.logs import PendingLine, job_log_append
from notifications.groups import job_group
from notifications.publish import publish_log

logger = logging.getLogger(__name__)

QUEUE_MAX_LINES = 10_000  # lines a run may have waiting; past it `report.log()` waits for the flusher
# A log frame's lines leave at most FRAME_MAX_BYTES per flush, PROGRESS_MAX_RATE flushes a
# second: 640 KiB/s per job at the defaults, far past what a person reads. A kind that writes
# faster is slowed by the wait above rather than have lines dropped or frames grow unbounded.
LINE_OVERHEAD_BYTES = len('{"n":1234567890123456789,"t":"2026-11-25T12:00:03.123456Z","level":"warning","text":""},')
ROOM_WAIT_SECONDS = 1.0  # a waiting `report.log()` looks again this often (the run may have ended)


def _line_bytes(text: str) -> int:
    """At most what a line of `text` adds to a log frame."""
    return LINE_OVERHEAD_BYTES + len(json.dumps(text, ensure_ascii=False).encode())


class JobLogWriter:
    """One run's log: lines queued by the kind's thread, kept and published by the flusher's."""

    def __init__(self, *, job_id: uuid.UUID, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.group = job_group(job_id)
        self._queued: deque[tuple[float, LogLevel, str]] = deque()  # append and popleft need no lock
        self._flush_lock = threading.Lock()  # one batch at a time: lines leave in order
        self._room = threading.Condition()  # a full queue's writer waits on it for the flusher
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
        if len(queued) > QUEUE_MAX_LINES:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        with self._room:
            while len(self._queued) > QUEUE_MAX_LINES // 2 and not self.closed:
                self._room.wait(ROOM_WAIT_SECONDS)

    @property
    def pending(self) -> bool:
        return bool(self._queued or self._unkept)

    def flush(self) -> None:
        """Keeps and publishes the lines queued so far, at most one frame's worth (the flusher)."""
        with self._flush_lock:
            self._flush_one()
        with self._room:
            self._room.notify_all()

    def _flush_one(self) -> None:
        batch = self._unkept
        self._unkept = []
        queued = self._queued
        size = sum(_line_bytes(line.text) for line in batch)
        while queued and (size < FRAME_MAX_BYTES - LINE_OVERHEAD_BYTES or not batch):
            at, level, text = queued[0]
            line_size = _line_bytes(text)
            if batch and size + line_size > FRAME_MAX_BYTES - 64:  # the frame's envelope
                break
            queued.popleft()
            size += line_size
            batch.append(PendingLine(t=datetime.fromtimestamp(at, tz=UTC), level=level, text=text))
        if not batch:
            return
        try:
            appended = job_log_append(job_id=self.job_id, attempt=self.attempt, lines=batch)
        except Exception:
            self._unkept = batch
            raise
        if appended is None or not appended.lines:  # the run was ended or replaced: its lines are not the job's
            return
        lines = [line_payload(line) for line in appended.lines]
        text = log_frame_text(lines, total=appended.total, dropped=appended.dropped)
        publish_log([self.group], str(self.job_id), first=lines[0]["n"], last=lines[-1]["n"], text=text)

    def close(self) -> None:
        """The run ends: what is left is kept and published now, before its terminal write."""
        flusher.discard(self)
        try:
            while self.pending:  # one frame's worth at a time, back to back
                self.flush()
        except Exception:
            logger.exception("job %s: its last log lines could not be kept", self.job_id)
        finally:
            self.closed = True
            with self._room:
                self._room.notify_all()


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
