"""Waiting in tests: poll a condition until it holds or a deadline passes. Never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_INTERVAL = 0.02  # seconds between checks


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = POLL_INTERVAL) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = POLL_INTERVAL
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
