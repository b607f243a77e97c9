"""Throwaway Django apps a test writes into a folder of its own (put on PYTHONPATH): an
`apps.py` and a `jobkinds.py` declaring kinds, as an app outside jobstream would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SETUP_TIMEOUT = 60.0  # seconds for a process to import the settings and set Django up

# One kind per name: `times` reports (and log lines), `pause` seconds apart.
KIND_SOURCE = '''
@job_kind(name={name!r}, title={title!r}, params=(Param("times", "Times", 1, 100, default=3),))
def run_{name}(report: Reporter, *, times: int) -> dict[str, Any]:
    """Waves, times times."""
    report(current=0, total=times, message="starting")
    for done in range(1, times + 1):
        time.sleep({pause!r})
        report.log(f"wave {{done}}")
        report(current=done, total=times, message=f"waved {{done}} of {{times}}")
    return {{"waved": times}}
'''


def write_kind_app(root: Path, package: str, kinds: dict[str, str], *, pause: float = 0.0) -> Path:
    """The app `package` under root, with one kind for each name -> title of `kinds`."""
    app = root / package
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    label = package.replace(".", "_")
    (app / "apps.py").write_text(
        "from django.apps import AppConfig\n\n\n"
        f"class KindAppConfig(AppConfig):\n    name = {package!r}\n    label = {label!r}\n"
    )
    source = "import time\nfrom typing import Any\n\nfrom jobs.kinds import Param, Reporter, job_kind\n"
    for name, title in kinds.items():
        source += KIND_SOURCE.format(name=name, title=title, pause=pause)
    (app / "jobkinds.py").write_text(source)
    return app


def env_with_apps(base: dict[str, str], *, pythonpath: Path, apps: str) -> dict[str, str]:
    """`base` with JOBSTREAM_EXTRA_APPS set and `pythonpath` (then the checkout) importable."""
    paths = [str(pythonpath), str(ROOT), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
    return {**base, "JOBSTREAM_EXTRA_APPS": apps, "PYTHONPATH": os.pathsep.join(paths)}


def run_django(code: str, *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`code` run in a fresh Python after django.setup(), with `env`."""
    return subprocess.run(
        [sys.executable, "-c", f"import django\ndjango.setup()\n{code}"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "core.settings"},
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
    )
