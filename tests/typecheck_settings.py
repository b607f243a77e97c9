"""The settings mypy's Django plugin loads: core.settings with the test run's DEBUG and
SECRET_KEY (tests/environment.py), as core.settings alone refuses to load without a
SECRET_KEY outside DEBUG."""

from __future__ import annotations

import tests.environment  # noqa: F401  (sets the environment first)
from core.settings import *  # noqa: F403
