"""A log sink for running a kind directly: `Progress(emit=..., max_rate=..., log=LogLines())`
keeps every line the kind writes as (text, level), split and cut as the worker's writer
does (jobs/logs.py)."""

from __future__ import annotations

from jobs.logs import level_checked, text_lines


class LogLines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, text: object, level: str = "info") -> None:
        level = level_checked(level)
        self.lines.extend((line, level) for line in text_lines(text))

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.lines]

    def at(self, level: str) -> list[str]:
        return [text for text, line_level in self.lines if line_level == level]
