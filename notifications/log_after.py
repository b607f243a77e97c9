"""`log_after`, the line a stream's log starts after (docs/contract.md#job-logs): read the
same way by the socket's query string and the event stream's."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from core.whole_numbers import BIGINT_DIGITS, is_whole_number


def query_value(scope: dict[str, Any], name: str) -> str | None:
    """The last value of `name` in an ASGI scope's query string; None when it is absent."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get(name)
    return values[-1] if values else None


def log_after_of(raw: str | None) -> tuple[int, str | None]:
    """`log_after` as a number (0 when absent), and what is wrong with it (None when nothing)."""
    if raw is None:
        return 0, None
    if is_whole_number(raw):
        return int(raw), None
    return 0, (
        f"log_after must be a whole number of at most {BIGINT_DIGITS} digits "
        "(the number of the last log line shown); the log starts from its first kept line."
    )
