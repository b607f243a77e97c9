"""uWSGI for bench/alternatives/compare.py, built from PyPI into a virtualenv of its own.

Not in the project's requirements: it compiles C at install (a compiler and Python's
headers), and only the comparison runs it. The first call builds it into
$XDG_CACHE_HOME/jobstream/uwsgi-venv (~/.cache by default; outside the tree, which
`ruff check .` and `mypy .` walk) in a minute or two; later calls reuse it. uWSGI's embedded
interpreter is the same Python as .venv's, so the served app imports Django and the rest
from .venv (`--virtualenv`) and gevent from this virtualenv (`--pythonpath`).

    .venv/bin/python -m bench.alternatives.uwsgi_env     # build it, or print why it does not build
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
VENV = CACHE / "jobstream" / "uwsgi-venv"
PACKAGES = ("uwsgi==2.0.31", "gevent==26.9.0")  # the releases this comparison was written against
BUILD_TIMEOUT = 900.0  # seconds: uWSGI compiles from source on a busy machine


class UwsgiUnavailable(RuntimeError):
    """uWSGI did not build or install here; the message holds pip's own words."""


@dataclass(frozen=True)
class Uwsgi:
    binary: Path
    site_packages: Path  # where gevent is


def _site_packages(venv: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv / "lib" / version / "site-packages"


def ensure_uwsgi() -> Uwsgi:
    binary = VENV / "bin" / "uwsgi"
    found = Uwsgi(binary, _site_packages(VENV))
    if binary.exists() and (found.site_packages / "gevent").is_dir():
        return found
    python = sysconfig.get_config_var("BINDIR")
    base = Path(python) / f"python{sys.version_info.major}.{sys.version_info.minor}"
    steps = [
        [str(base if base.exists() else sys.executable), "-m", "venv", str(VENV)],
        [str(VENV / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", *PACKAGES],
    ]
    for command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise UwsgiUnavailable(f"`{' '.join(command)}` did not finish within {BUILD_TIMEOUT:.0f} s") from exc
        if done.returncode != 0:
            raise UwsgiUnavailable(
                f"`{' '.join(command)}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
            )
    return found


if __name__ == "__main__":
    try:
        print(ensure_uwsgi())
    except UwsgiUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
