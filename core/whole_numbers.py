"""The one rule for a whole number read from outside (a query value, a header): ASCII
digits only, few enough for a PositiveBigIntegerField. `str.isdigit` alone takes "²",
which int() refuses; int() alone takes " 5", "+5" and "1_000"."""

from __future__ import annotations

BIGINT_DIGITS = 19  # a seq or a log line's n is a PositiveBigIntegerField: 19 digits hold every one


def is_whole_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= BIGINT_DIGITS
