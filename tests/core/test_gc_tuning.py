"""The long-running processes freeze their start-up heap and raise the young threshold
(core/gc_tuning.py): checked in fresh interpreters, as daphne and a worker start."""

from __future__ import annotations

import json
import subprocess
import sys

from core.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD
from tests.conftest import ROOT

REPORT = "import gc, json; print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"


def gc_state_after(code: str, env: dict[str, str]) -> tuple[list[int], int]:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    thresholds, frozen = json.loads(result.stdout.strip().splitlines()[-1])
    return thresholds, frozen


def test_daphne_application_freezes_the_start_up_heap(live_server_env: dict[str, str]) -> None:
    thresholds, frozen = gc_state_after("import core.asgi", live_server_env)
    assert thresholds == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
    assert frozen > 50_000  # Django, Channels, Twisted and the apps: ~105,000 objects here


def test_a_ready_worker_freezes_its_start_up_heap(live_server_env: dict[str, str]) -> None:
    code = "from celery.signals import worker_ready; from celery_app import app; worker_ready.send(sender=None)"
    thresholds, frozen = gc_state_after(code, live_server_env)
    assert thresholds == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
    assert frozen > 20_000


def test_a_plain_import_of_the_celery_app_leaves_the_collector_alone(live_server_env: dict[str, str]) -> None:
    thresholds, frozen = gc_state_after("import celery_app", live_server_env)  # manage.py, the web process
    assert (thresholds[0], frozen) == (700, 0)
