"""This daphne process's own stream figures for /metrics (docs/contract.md#metrics).

- `jobstream_sockets_open{path}`: streams open now, by route: `/ws/jobs/`,
  `/ws/jobs/{id}/`, `/ws/staff/jobs/` and the event stream `/api/jobs/{id}/events/`
  (ids folded into the route, so the labels stay four).
- `jobstream_frames_delivered_total`: frames a stream sent its client: job, snapshot and
  log frames, and event-stream events (keep-alives and error frames aside).
- `jobstream_delivery_lag_seconds`: for each job frame pushed to a client, its send time
  less the publisher's stamp (`published_at`, notifications/publish.py).

The figures sit on the hot path of fan-out (a thousand sockets take each frame), so they
are plain ints and a bucket list, read by a Collector at scrape time: a frame costs a
clock read, a bisect and two additions. The event loop writes them and the scrape's
thread reads them; a scrape that lands between two additions is a frame behind, no more.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_SOCKET = "/ws/jobs/{id}/"
OWNER_SOCKET = "/ws/jobs/"
STAFF_SOCKET = "/ws/staff/jobs/"
EVENT_STREAM = "/api/jobs/{id}/events/"
STREAM_PATHS = (OWNER_SOCKET, JOB_SOCKET, STAFF_SOCKET, EVENT_STREAM)
# Seconds from the publisher's stamp to the send: a healthy frame takes a few
# milliseconds, a loaded daphne tens; past a second a bar visibly lags.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StreamFigures:
    """The counts of one process (one instance, `STREAMS`)."""

    __slots__ = ("delivered", "lag_counts", "lag_sum", "open")

    def __init__(self) -> None:
        self.open: dict[str, int] = dict.fromkeys(STREAM_PATHS, 0)
        self.delivered = 0
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)  # per bucket (not cumulative), the last one past 10 s
        self.lag_sum = 0.0

    def opened(self, path: str) -> None:
        self.open[path] += 1

    def closed(self, path: str) -> None:
        self.open[path] -= 1

    def sent(self, count: int = 1) -> None:
        """Frames a stream sent that no publisher stamped (snapshots, backfills)."""
        self.delivered += count

    def pushed(self, message: Mapping[str, Any]) -> None:
        """A frame from the layer sent to a client: counted, and its lag observed when stamped."""
        self.delivered += 1
        stamp = message.get("published_at")
        if stamp is not None:
            lag = time.time() - stamp
            if lag < 0.0:  # a publisher's clock ahead of this host's
                lag = 0.0
            self.lag_counts[bisect_left(LAG_BUCKETS, lag)] += 1
            self.lag_sum += lag


STREAMS = StreamFigures()


class StreamsCollector(Collector):
    """`STREAMS` in Prometheus's families, at scrape time."""

    def __init__(self, figures: StreamFigures = STREAMS) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures
        sockets = GaugeMetricFamily(
            "jobstream_sockets_open", "WebSockets and event streams open in this process.", labels=["path"]
        )
        for path, count in list(figures.open.items()):
            sockets.add_metric([path], count)
        yield sockets
        yield CounterMetricFamily(
            "jobstream_frames_delivered", "Frames this process's streams sent their clients.", value=figures.delivered
        )
        counts = list(figures.lag_counts)
        cumulative, buckets = 0, []
        for bound, count in zip((*LAG_BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        lag = HistogramMetricFamily(
            "jobstream_delivery_lag_seconds", "From the publisher's stamp to the send, per job frame pushed."
        )
        lag.add_metric([], buckets, sum_value=figures.lag_sum)
        yield lag
