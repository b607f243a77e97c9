"""The heartbeat of the jobs running in this process: one daemon thread per process.

A job that never reports progress must still look alive, and a job whose worker died
must stop looking alive soon: every JOB_HEARTBEAT_INTERVAL seconds the thread marks
every job running in its process in one UPDATE (`job_heartbeat` in jobs/services/run.py),
whatever the pool (prefork children, threads, solo). The sweeper takes a running job
whose heartbeat is older than JOB_STALE_AFTER for lost with its worker.

A forked child (Celery's prefork pool) starts a thread of its own on first use, as
the publisher does (notifications/publish.py): threads do not survive a fork.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

Beat = Callable[[Mapping[uuid.UUID, int]], object]  # marks {job id: attempt} alive


class Heartbeat:
    """Keeps the runs of this process (job id → attempt) marked alive while they run."""

    def __init__(self, beat: Beat) -> None:
        self._beat = beat
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._runs: dict[uuid.UUID, int] = {}
        os.register_at_fork(after_in_child=self._after_fork)

    def add(self, job_id: uuid.UUID, *, attempt: int) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._start_thread()
            self._runs[job_id] = attempt

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._runs.pop(job_id, None)

    def runs(self) -> dict[uuid.UUID, int]:
        with self._lock:
            return dict(self._runs)

    def _after_fork(self) -> None:
        # The child inherits the parent's list but none of its jobs, nor its thread, and
        # possibly a lock held by a thread that no longer exists.
        self._lock = threading.Lock()
        self._runs = {}
        self._pid = None

    def _start_thread(self) -> None:
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="jobstream-heartbeat", daemon=True).start()

    def _run(self) -> None:
        stop = threading.Event()  # never set: waits without a bare sleep, for the interval
        while not stop.wait(settings.JOB_HEARTBEAT_INTERVAL):
            runs = self.runs()
            if not runs:
                continue
            try:
                self._beat(runs)
            except Exception:
                # The sweeper acts only after JOB_STALE_AFTER (at least two beats): one
                # missed beat (the database restarting, a lock held too long) costs nothing.
                logger.warning("heartbeat of %d running job(s) failed; retrying", len(runs), exc_info=True)
            finally:
                # This thread's own connection, opened per beat: one kept open between
                # beats would hold a PostgreSQL slot for nothing (and, in tests, stop the
                # test database from being dropped). One connect every few seconds is cheap.
                connection.close()
