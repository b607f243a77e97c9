"""What travels through the channel layer: a job's frame, encoded once by its publisher.

Consumers route and filter it by `job_id`, `seq` and `terminal` and forward `text` as it
is, so a frame is never decoded or encoded again on its way to the sockets.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class LayerJobMessage(TypedDict):
    type: Literal["job.frame"]
    job_id: str
    seq: int
    terminal: bool
    text: str
