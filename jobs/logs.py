"""A job's log, declared once: its lines, its levels, and the frames that carry them
(docs/contract.md#job-logs).

A kind writes `report.log(text, level=...)`; the worker numbers the lines, keeps them
in the database and publishes them in batches (jobs/log_writer.py). Every reader (the
log API, `log.txt`, the socket's and the event stream's `log` frames, the terminal
client) takes lines in the one shape `LogLinePayload` and frames them here.
"""

# No `from __future__ import annotations`: pydantic (ninja's schema) reads these TypedDicts.
import json
import re
from datetime import datetime
from typing import Literal, Protocol

from typing_extensions import TypedDict

from jobs.models import JobLogLine
from jobs.serializers import timestamp

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LINE_MAX_CHARS = 2000  # a line's text at most, its ending "…" included: a page shows it whole
CUT_MARK = "…"
# Lone surrogates (text decoded with errors="surrogateescape", such as os.fsdecode's) have
# no UTF-8: the database, the byte count and the frames would each refuse them.
_SURROGATES = re.compile("[\ud800-\udfff]")
LOG_PAGE_MAX = 1000  # lines per page of GET /api/jobs/<id>/log/, at most (and by default)
BACKFILL_MAX_LINES = 500  # lines a socket or event stream sends on opening, at most: the log's end
FRAME_MAX_BYTES = 64 * 1024  # a log frame at most: a browser parses it in one go without a stall


class LogLinePayload(TypedDict):
    n: int
    """The line's number in its job's log: from 1, strictly increasing, across attempts."""
    t: str
    """When the kind wrote it (ISO 8601, UTC, microseconds)."""
    level: LogLevel
    text: str


class LogPage(TypedDict):
    lines: list[LogLinePayload]
    total: int
    """Lines written so far."""
    dropped: int
    """Lines no longer kept (past JOB_LOG_MAX_LINES, the oldest go)."""
    next: int | None
    """The `after` of the next page; null when no kept line follows."""


class LogFrame(TypedDict):
    type: Literal["log"]
    lines: list[LogLinePayload]
    total: int
    dropped: int


LogPage.__pydantic_config__ = {"use_attribute_docstrings": True}  # type: ignore[attr-defined]
LogLinePayload.__pydantic_config__ = {"use_attribute_docstrings": True}  # type: ignore[attr-defined]


def level_checked(level: str) -> LogLevel:
    """The level, or ValueError naming the ones there are (a kind's mistake, raised in it)."""
    if level not in LOG_LEVELS:
        raise ValueError(f"Unknown log level {level!r}; use one of {', '.join(LOG_LEVELS)}.")
    return level  # type: ignore[return-value]


def text_lines(text: object) -> list[str]:
    """A kind's text as log lines: one per line of it, each cut to LINE_MAX_CHARS, a lone
    surrogate replaced by U+FFFD."""
    if not isinstance(text, str):
        text = str(text)
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)
    lines = text.splitlines() or [""]
    return [line if len(line) <= LINE_MAX_CHARS else line[: LINE_MAX_CHARS - 1] + CUT_MARK for line in lines]


class _Line(Protocol):
    """A numbered line, as kept (`JobLogLine`) or just written (`KeptLine`)."""

    @property
    def n(self) -> int: ...
    @property
    def t(self) -> datetime: ...
    @property
    def level(self) -> str: ...
    @property
    def text(self) -> str: ...


def line_payload(line: _Line | JobLogLine) -> LogLinePayload:
    return {"n": line.n, "t": timestamp(line.t) or "", "level": line.level, "text": line.text}  # type: ignore[typeddict-item]


def line_text(line: LogLinePayload) -> str:
    """A line of `log.txt`: `<t> <LEVEL> <text>`."""
    return f"{line['t']} {line['level'].upper()} {line['text']}\n"


# --- frames ----------------------------------------------------------------------

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def log_data_text(lines: list[LogLinePayload], *, total: int, dropped: int) -> str:
    """`{"lines", "total", "dropped"}`: an event stream's `log` event data."""
    return _ENCODER.encode({"lines": lines, "total": total, "dropped": dropped})


def log_frame_text(lines: list[LogLinePayload], *, total: int, dropped: int) -> str:
    """A socket's `{"type": "log", ...}` frame."""
    frame: LogFrame = {"type": "log", "lines": lines, "total": total, "dropped": dropped}
    return _ENCODER.encode(frame)


def frame_chunks(lines: list[LogLinePayload], *, max_bytes: int = FRAME_MAX_BYTES) -> list[list[LogLinePayload]]:
    """The lines in order, cut into runs whose frame stays under `max_bytes`; one empty
    run for no lines (a backfill always sends a frame)."""
    envelope = len(log_frame_text([], total=10**18, dropped=10**18).encode())
    chunks: list[list[LogLinePayload]] = [[]]
    size = envelope
    for line in lines:
        line_size = len(_ENCODER.encode(line).encode()) + 1  # and its comma
        if chunks[-1] and size + line_size > max_bytes:
            chunks.append([])
            size = envelope
        chunks[-1].append(line)
        size += line_size
    return chunks
