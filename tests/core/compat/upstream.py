"""What the canary tests compare: the source of an upstream function a patch repeats or overrides.

A patch that repeats upstream code (`AsyncConsumer.__call__`) or overrides a private method
(`RedisSingleShardConnection._do_receiving`) was written against that code as it is in the
pinned version. `source_digest` fingerprints it; a canary test holds the fingerprint taken
when the patch was written and fails when the installed code differs, naming what to re-read.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any


def source_digest(obj: Any) -> str:
    """The first 16 hex digits of the SHA-256 of an object's source."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def changed_sources(expected: dict[str, tuple[Any, str]]) -> list[str]:
    """The names whose source no longer has the recorded digest, with what it is now."""
    return [
        f"{name}: {source_digest(obj)} (recorded {digest})"
        for name, (obj, digest) in expected.items()
        if source_digest(obj) != digest
    ]
