"""jobstream's ASGI application with the lockstep benchmark kind registered (bench/lockstep.py)."""

from __future__ import annotations

from importlib import import_module

from core.asgi import application

import_module("bench.lockstep")  # registers the kind; only once core.asgi has set Django up

__all__ = ["application"]
