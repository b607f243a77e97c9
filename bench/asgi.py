"""jobstream's ASGI application with the benchmarks' job kinds registered (bench/kinds.py)."""

from __future__ import annotations

from importlib import import_module

from core.asgi import application

import_module("bench.kinds")  # registers the kinds; only once core.asgi has set Django up

__all__ = ["application"]
