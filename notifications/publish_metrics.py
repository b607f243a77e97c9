"""A publishing process's own figures (docs/contract.md#metrics), served by the worker
host on WORKER_METRICS_PORT (core/worker_metrics.py):

- `jobstream_frames_published_total`: job frames and log batches handed to the channel layer;
- `jobstream_publisher_backlog`: frames handed to the sender thread and not yet sent (0
  while callers write their own frames, notifications/publish.py).

prometheus_client's own metrics, so a prefork child's figures reach its parent's server
through PROMETHEUS_MULTIPROC_DIR; the backlog sums the live processes only.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES_PUBLISHED = Counter(
    "jobstream_frames_published", "Job frames and log batches this process handed to the channel layer."
)
PUBLISHER_BACKLOG = Gauge(
    "jobstream_publisher_backlog",
    "Frames waiting for the publisher's sender thread (Redis slow or away).",
    multiprocess_mode="livesum",
)
