"""The `threads` pool shares one result backend between its threads (core/settings.py)."""

from __future__ import annotations

import threading
from typing import Any


def test_worker_threads_share_one_result_backend() -> None:
    from celery_app import app

    assert app.conf.result_backend_thread_safe is True
    first = app.backend  # built once (Celery does not lock the first build against other threads)
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(app.backend)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 3
    assert all(backend is first for backend in seen)
