"""The figures behind /metrics and the worker's port, in this process: the publisher's
stamp and count, and the stream figures' buckets as Prometheus reads them."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from notifications.messages import LayerJobMessage
from notifications.publish import publish_frame
from notifications.publish_metrics import FRAMES_PUBLISHED
from notifications.stream_metrics import LAG_BUCKETS, OWNER_SOCKET, StreamFigures, StreamsCollector
from tests.scrapes import Scrape

SENT: list[tuple[list[str], LayerJobMessage]] = []


def collect(groups: list[str], message: LayerJobMessage) -> None:
    """A JOBSTREAM_PUBLISHER that keeps what it is given."""
    SENT.append((groups, message))


def test_a_published_frame_carries_the_publishers_stamp_beside_its_text_and_is_counted(settings: Any) -> None:
    settings.JOBSTREAM_PUBLISHER = f"{__name__}.collect"
    SENT.clear()
    counted = FRAMES_PUBLISHED._value.get()
    before = time.time()
    publish_frame(["g"], "job-1", 3, False, '{"type":"job"}')
    ((_, message),) = SENT
    assert before <= message["published_at"] <= time.time()
    assert message["text"] == '{"type":"job"}'  # the client's frame, untouched
    assert FRAMES_PUBLISHED._value.get() == counted + 1


def scraped(figures: StreamFigures) -> Scrape:
    registry = CollectorRegistry()
    registry.register(StreamsCollector(figures))
    return Scrape.parse(generate_latest(registry).decode())


def stamped(lag: float) -> dict[str, Any]:
    return {
        "type": "job.frame",
        "job_id": "j",
        "seq": 1,
        "terminal": False,
        "text": "{}",
        "published_at": time.time() - lag,
    }


def test_stream_figures_count_frames_and_bucket_each_stamped_frames_lag() -> None:
    figures = StreamFigures()
    figures.opened(OWNER_SOCKET)
    figures.opened(OWNER_SOCKET)
    figures.closed(OWNER_SOCKET)
    figures.sent(2)  # a snapshot and a backfill: no stamp, no lag
    figures.pushed(stamped(0.3))
    figures.pushed(stamped(30.0))
    figures.pushed({"type": "job.log", "text": "{}"})  # a log batch: counted, no lag
    figures.pushed({**stamped(0.0), "published_at": time.time() + 60})  # a publisher's clock ahead: lag 0
    found = scraped(figures)
    assert found.value("jobstream_sockets_open", path=OWNER_SOCKET) == 1
    assert found.value("jobstream_frames_delivered_total") == 6
    lag = "jobstream_delivery_lag_seconds"
    assert found.value(f"{lag}_count") == 3
    assert found.value(f"{lag}_bucket", le="0.001") == 1
    assert found.value(f"{lag}_bucket", le="0.25") == 1
    assert found.value(f"{lag}_bucket", le="0.5") == 2
    assert found.value(f"{lag}_bucket", le=repr(LAG_BUCKETS[-1])) == 2
    assert found.value(f"{lag}_bucket", le="+Inf") == 3
    assert 30.2 < found.value(f"{lag}_sum") < 31.0
