"""What DESIGN.md promises every client, in one place for the tests that check it."""

from __future__ import annotations

# The keys of the job JSON in every API body and stream frame (staff also get error_detail).
JOB_KEYS = frozenset(
    {
        "id",
        "kind",
        "params",
        "state",
        "seq",
        "progress",
        "result",
        "result_url",
        "error",
        "queue_position",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "url",
    }
)
