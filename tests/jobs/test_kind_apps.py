"""Kinds from any app (jobs/apps.py, core/settings.py): an installed app's `jobkinds.py`
is imported at start-up, JOBSTREAM_EXTRA_APPS installs apps, and a bad entry or a name
declared twice stops start-up saying where. Each case starts a fresh Python: an app
registry is set up once per process."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.kind_apps import env_with_apps, run_django, write_kind_app

BUILTIN = ["csv_import", "pipeline", "primes", "report", "sleep"]
PRINT_KINDS = "from jobs.kinds import kind_list\nprint(json.dumps([kind.name for kind in kind_list()]))"


def kinds_in_process(env: dict[str, str]) -> list[str]:
    started = run_django(f"import json\n{PRINT_KINDS}", env=env)
    assert started.returncode == 0, started.stderr
    names: list[str] = json.loads(started.stdout.splitlines()[-1])
    return names


def test_jobkinds_module_of_an_installed_app_is_imported_at_startup(tmp_path: Path) -> None:
    write_kind_app(tmp_path, "wave_app", {"wave": "Wave"})
    env = env_with_apps(dict(os.environ), pythonpath=tmp_path, apps="wave_app")
    assert kinds_in_process(env) == sorted([*BUILTIN, "wave"])  # the built-in kinds once each, beside it


def test_an_app_named_by_its_appconfig_path_has_its_kinds_imported(tmp_path: Path) -> None:
    write_kind_app(tmp_path, "wave_app", {"wave": "Wave"})
    env = env_with_apps(dict(os.environ), pythonpath=tmp_path, apps="wave_app.apps.KindAppConfig")
    assert "wave" in kinds_in_process(env)


def test_the_readme_example_app_adds_its_kind() -> None:
    env = {**os.environ, "JOBSTREAM_EXTRA_APPS": "examples.greetings"}
    assert kinds_in_process(env) == sorted([*BUILTIN, "greet"])


def test_without_extra_apps_only_the_builtin_kinds_are_registered() -> None:
    env = {**os.environ}
    env.pop("JOBSTREAM_EXTRA_APPS", None)
    assert kinds_in_process(env) == BUILTIN


def test_one_kind_name_in_two_apps_stops_startup_naming_both_modules(tmp_path: Path) -> None:
    write_kind_app(tmp_path, "first_app", {"twin": "Twin"})
    write_kind_app(tmp_path, "second_app", {"twin": "Twin too"})
    env = env_with_apps(dict(os.environ), pythonpath=tmp_path, apps="first_app,second_app")
    started = run_django("", env=env)
    assert started.returncode != 0
    assert "Job kind 'twin' is registered twice: in first_app.jobkinds and in second_app.jobkinds;" in started.stderr


def test_an_app_kind_named_like_a_builtin_one_stops_startup_naming_both_modules(tmp_path: Path) -> None:
    write_kind_app(tmp_path, "sleepy_app", {"sleep": "Another sleep"})
    env = env_with_apps(dict(os.environ), pythonpath=tmp_path, apps="sleepy_app")
    started = run_django("", env=env)
    assert started.returncode != 0
    assert "'sleep' is registered twice: in jobs.builtin_kinds and in sleepy_app.jobkinds;" in started.stderr


def test_an_extra_app_that_cannot_be_imported_stops_startup_naming_it(tmp_path: Path) -> None:
    write_kind_app(tmp_path, "wave_app", {"wave": "Wave"})
    for bad in ("no_such_app", "wave_app.no_such_module", "wave_app.apps.NoSuchConfig"):
        env = env_with_apps(dict(os.environ), pythonpath=tmp_path, apps=f"wave_app,{bad}")
        started = run_django("", env=env)
        assert started.returncode != 0
        assert f"RuntimeError: JOBSTREAM_EXTRA_APPS: the app {bad!r} cannot be imported;" in started.stderr
