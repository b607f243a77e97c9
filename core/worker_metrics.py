"""A worker host's figures on WORKER_METRICS_PORT (docs/deploy.md#metrics): a bootstep
(celery_app.py) starts prometheus_client's HTTP server in the worker's main process.

- threads and solo pools: the jobs run in that process, and the server reads its own
  registry (notifications/publish_metrics.py, plus the process's CPU and memory);
- prefork: the jobs run in child processes, which write their figures to
  PROMETHEUS_MULTIPROC_DIR (it must be set for every process of the worker, before
  start); the server sums them (MultiProcessCollector). The directory is emptied at the
  worker's start, so it must be the worker's own, and a child that exits leaves its
  counters counted and its share of the backlog dropped.

Start-up stops, naming the variable, when the port is taken or prefork has no directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_process_shutdown
from django.conf import settings
from prometheus_client import REGISTRY, multiprocess, start_http_server
from prometheus_client.registry import CollectorRegistry

import notifications.publish_metrics  # noqa: F401  (its figures are in REGISTRY from the start)

logger = logging.getLogger(__name__)


def forks_children(pool_cls: object) -> bool:
    return isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool)


def multiprocess_registry(path: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


class WorkerMetricsServer(bootsteps.StartStopStep):
    """Serves the figures while the worker runs; nothing when WORKER_METRICS_PORT is unset."""

    name = "jobstream worker metrics"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.port: int | None = settings.WORKER_METRICS_PORT
        self.server: Any = None
        self.registry: Any = REGISTRY
        if self.port is None:
            return
        directory = settings.PROMETHEUS_MULTIPROC_DIR
        if forks_children(parent.pool_cls) and directory is None:
            raise RuntimeError(
                "WORKER_METRICS_PORT is set and the pool is prefork: set PROMETHEUS_MULTIPROC_DIR too, "
                "an empty directory of this worker's own, so its child processes' figures reach the port "
                "(or use CELERY_WORKER_POOL=threads)."
            )
        if directory is not None:
            for stale in Path(directory).glob("*.db"):  # a previous run's children
                stale.unlink(missing_ok=True)
            self.registry = multiprocess_registry(directory)

    def start(self, parent: Any) -> None:
        if self.port is None:
            return
        address = settings.WORKER_METRICS_ADDRESS
        try:
            self.server, _ = start_http_server(self.port, addr=address, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(f"WORKER_METRICS_PORT: cannot serve on {address}:{self.port}: {exc}.") from None
        logger.info("worker metrics on http://%s:%d/metrics", address, self.port)

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@worker_process_shutdown.connect
def _child_exits(**_: object) -> None:
    """A prefork child's backlog share leaves the sum with it (its counters stay counted)."""
    if settings.PROMETHEUS_MULTIPROC_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), settings.PROMETHEUS_MULTIPROC_DIR)
