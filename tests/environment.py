"""The test run's own environment, set before Django reads its settings.

Loaded as a plugin (`-p tests.environment`, pyproject's addopts) because pytest-django
imports the settings before any conftest.py. The settings fail closed (DEBUG off, no
start without SECRET_KEY), so the suite says what it runs with:

- this process and what it starts with `os.environ` as a base run with DEBUG on, as a
  developer's shell under `make run` does (pytest-django still turns DEBUG off inside
  every test, so in-process answers are the production ones);
- the servers and workers the fixtures start get `live_server_env` (tests/conftest.py):
  DEBUG off, this SECRET_KEY, as production runs them.

A value already in the environment wins, so a run can still be pointed elsewhere.
The non-DEBUG start-up (no SECRET_KEY stops it) is checked in tests/test_deploy_checks.py.
"""

from __future__ import annotations

import os

TEST_SECRET_KEY = "jobstream-tests-secret-key-not-for-production-0123456789"
TEST_METRICS_TOKEN = "jobstream-tests-metrics-token-0123456789"  # the servers' METRICS_TOKEN (tests/conftest.py)

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", TEST_SECRET_KEY)
