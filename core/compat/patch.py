"""A patch of an upstream's behaviour, and the version range it was written and tested for.

Each module of `core.compat` declares its patches as `Patch` objects. `Patch.apply()`
runs once per process: inside the range it installs the patch (or, for a patch that is a
subclass the product uses, marks it active); outside the range a SPEED patch logs one
warning and leaves the stock behaviour in place, and a SAFETY patch stops start-up
naming the package, its version and the range (`IncompatibleUpstream`). `manage.py
check` reports the same (core/compat/checks.py). docs/compat.md lists every patch.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

logger = logging.getLogger("core.compat")


class Kind(enum.Enum):
    SPEED = "speed"  # outside its range: a warning, stock behaviour, slower
    SAFETY = "safety"  # outside its range: start-up stops


class IncompatibleUpstream(ImproperlyConfigured):
    """A safety patch's upstream is installed at a version it was not tested with."""


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Upstream:
    """An upstream package and the release series its patches were written and tested for
    (declared once per module of core.compat); it makes the module's patches."""

    def __init__(self, key: str, *, package: str, tested: str) -> None:
        self.key, self.package, self.tested = key, package, tested

    def speed(self, name: str, **details: Any) -> Patch:
        return Patch(name=f"{self.key}.{name}", package=self.package, tested=self.tested, kind=Kind.SPEED, **details)

    def safety(self, name: str, **details: Any) -> Patch:
        return Patch(name=f"{self.key}.{name}", package=self.package, tested=self.tested, kind=Kind.SAFETY, **details)


class Patch:
    """One change to one upstream package's behaviour.

    `install` does the change (a monkeypatch) and is called once, inside the range; a
    patch without one is a subclass that reads `active` where it takes its fast path.
    """

    def __init__(
        self,
        *,
        name: str,
        package: str,
        tested: str,
        kind: Kind,
        changes: str,
        why: str,
        upstream: str = "",
        install: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.package = package
        self.tested = SpecifierSet(tested)
        self.kind = kind
        self.changes = changes
        self.why = why
        self.upstream = upstream
        self._install = install
        self._lock = threading.Lock()
        self._decided = False
        self._active = False

    def __repr__(self) -> str:
        return f"<Patch {self.name} ({self.package} {self.tested}, {self.kind.value})>"

    @property
    def version(self) -> str | None:
        return installed_version(self.package)

    def in_range(self) -> bool:
        version = self.version
        if version is None:
            return False
        try:
            return Version(version) in self.tested
        except InvalidVersion:
            return False

    def problem(self) -> str | None:
        """Why the patch cannot apply here, in one sentence; None when it can."""
        if self.in_range():
            return None
        found = self.version or "not installed"
        return (
            f"{self.package} {found} is outside the range {self.tested} that jobstream's patch "
            f"'{self.name}' ({self.changes}) was written and tested for"
        )

    @property
    def active(self) -> bool:
        """Whether the patch is in effect in this process (decided on first use)."""
        if not self._decided:
            self.apply()
        return self._active

    def apply(self) -> bool:
        """Installs the patch once if its upstream is in range; True when it is active.

        Outside the range: a SPEED patch logs a warning and stays off; a SAFETY patch
        raises IncompatibleUpstream.
        """
        with self._lock:
            if self._decided:
                return self._active
            problem = self.problem()
            if problem is not None and self.kind is Kind.SAFETY:
                raise IncompatibleUpstream(
                    f"{problem}. Start-up stops: {self.why}. Install the version pinned in requirements.txt, "
                    "or test the patch against this one and widen its range in core/compat."
                )
            if problem is not None:
                logger.warning("%s; it is left off and the stock behaviour kept (%s).", problem, self.why)
                self._decided, self._active = True, False
                return False
            if self._install is not None:
                self._install()
            self._decided, self._active = True, True
            return True
