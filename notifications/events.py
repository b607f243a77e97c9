"""The job JSON of DESIGN.md, and the stream frames that carry it.

One function turns a Job into that JSON (`job_payload`); the API, the snapshots and
the frames all use it, so every consumer sees the same shape.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

from jobs.models import Job, JobState


class ProgressPayload(TypedDict):
    current: float | None
    total: float | None
    percent: float | None
    message: str
    rate: float | None
    eta_seconds: float | None


class JobPayload(TypedDict, total=False):
    id: str
    kind: str
    params: dict[str, Any]
    state: str
    seq: int
    progress: ProgressPayload | None
    result: Any
    result_url: str | None
    error: str | None
    error_detail: str | None  # staff only
    queue_position: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    url: str


class JobFrame(TypedDict):
    type: Literal["job"]
    job: JobPayload


class SnapshotFrame(TypedDict):
    type: Literal["snapshot"]
    jobs: list[JobPayload]
    counts: NotRequired[dict[str, int]]  # the staff stream only: jobs per state


class ErrorFrame(TypedDict):
    type: Literal["error"]
    error: str


class LayerJobMessage(TypedDict):
    """What travels through the channel layer: the frame is encoded once, here."""

    type: Literal["job.frame"]
    job_id: str
    seq: int
    terminal: bool
    text: str


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a `Z`."""
    if value is None:
        return None
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _number(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 3)


def progress_payload(job: Job) -> ProgressPayload | None:
    if not job.has_progress:
        return None
    current, total = job.progress_current, job.progress_total
    percent = None
    if current is not None and total:
        percent = round(min(max(current / total, 0.0), 1.0) * 100, 1)
    return {
        "current": _number(current),
        "total": _number(total),
        "percent": percent,
        "message": job.progress_message,
        "rate": None if job.progress_rate is None else round(job.progress_rate, 3),
        "eta_seconds": None if job.progress_eta_seconds is None else round(job.progress_eta_seconds, 1),
    }


def job_payload(job: Job, *, staff: bool = False, queue_position: int | None = None) -> JobPayload:
    payload: JobPayload = {
        "id": str(job.id),
        "kind": job.kind,
        "params": job.params,
        "state": job.state,
        "seq": job.seq,
        "progress": progress_payload(job),
        "result": job.result,
        "result_url": f"/api/jobs/{job.id}/result/" if job.result_file else None,
        "error": job.error or None,
        "queue_position": queue_position if job.state == JobState.QUEUED else None,
        "created_at": timestamp(job.created_at) or "",
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "updated_at": timestamp(job.updated_at) or "",
        "url": f"/jobs/{job.id}/",
    }
    if staff:
        payload["error_detail"] = job.error_detail or None
    return payload


# allow_nan=False: a NaN in a result would be invalid JSON for browsers. One encoder for
# every frame: `json.dumps` with any option builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(frame: JobFrame | SnapshotFrame | ErrorFrame) -> str:
    return _ENCODER.encode(frame)


def payload_text(payload: JobPayload) -> str:
    return _ENCODER.encode(payload)


def job_frame_text(payload: JobPayload) -> str:
    return encode({"type": "job", "job": payload})


def error_frame_text(message: str) -> str:
    return encode({"type": "error", "error": message})
