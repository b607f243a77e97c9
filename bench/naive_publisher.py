"""The usual pattern, the benchmarks' baseline: `async_to_sync(group_send)` for every frame.

The worker of a naive run publishes through it (JOBSTREAM_PUBLISHER=bench.naive_publisher.send_frame):
each call starts a thread, an event loop and a Redis connection. It keeps the two groups
the baseline was measured with (the job's and the owner's): a third group_send per update
would make the usual pattern look worse than it is.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def send_frame(groups: list[str], message: Any) -> None:
    layer = get_channel_layer()
    assert layer is not None
    for group in groups[:2]:
        try:
            async_to_sync(layer.group_send)(group, dict(message))
        except Exception as exc:
            logger.warning("publishing job %s seq %s failed: %r", message["job_id"], message["seq"], exc)
