"""What travels through the channel layer: a job's frame, encoded once by its publisher,
and the word that a session signed out.

Consumers route and filter it by `job_id`, `seq` and `terminal` and forward `text` as it
is, so a frame is never decoded or encoded again on its way to the sockets.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class LayerJobMessage(TypedDict):
    type: Literal["job.frame"]
    job_id: str
    seq: int
    terminal: bool
    text: str
    # The publisher's time.time() as it published (absent on a state read from the
    # database): the daphne measures delivery lag from it. Outside `text`, which the
    # client gets as it is.
    published_at: NotRequired[float]


class LayerLogMessage(TypedDict):
    """A batch of a job's log lines (jobs/log_writer.py), to its job group only: `text` is
    the socket's `log` frame as sent, `first` and `last` the numbers of its first and last
    line, so a stream drops what it has shown without decoding it."""

    type: Literal["job.log"]
    job_id: str
    first: int
    last: int
    text: str


class LayerSessionEndMessage(TypedDict):
    """A session signed out: every stream opened with it ends (a socket closes 4401)."""

    type: Literal["session.end"]


LayerMessage = LayerJobMessage | LayerLogMessage | LayerSessionEndMessage
