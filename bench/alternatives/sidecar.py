"""The Node.js side-car (bench/alternatives/node/server.js): installed, started, stopped.

    with NodeSidecar(django_url=..., redis_url=..., log=path) as sidecar:
        sidecar.ws_url, sidecar.pid

Its npm packages come from the registry through `npm ci` (the committed
package-lock.json) the first time, into bench/alternatives/node/node_modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from core.redis_local import free_port

NODE_DIR = Path(__file__).resolve().parent / "node"
INSTALL_TIMEOUT = 300.0  # seconds for `npm ci` on a cold cache
START_TIMEOUT = 20.0  # seconds for the side-car to answer /healthz
STOP_TIMEOUT = 10.0


class SidecarUnavailable(RuntimeError):
    """node or npm is missing, or the packages would not install; the message says which."""


def ensure_installed() -> None:
    """`npm ci` in bench/alternatives/node when its node_modules is missing."""
    if shutil.which("node") is None:
        raise SidecarUnavailable("node not found: install Debian's nodejs (apt-get install nodejs npm)")
    if (NODE_DIR / "node_modules" / "ws").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SidecarUnavailable("npm not found: install Debian's npm (apt-get install npm)")
    command = [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise SidecarUnavailable(f"`{' '.join(command)}` did not finish within {INSTALL_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise SidecarUnavailable(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")


class NodeSidecar:
    def __init__(self, *, django_url: str, redis_url: str, log: Path, origins: list[str] | None = None) -> None:
        self.django_url = django_url
        self.redis_url = redis_url
        self.log = log
        self.origins = origins or [django_url]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> NodeSidecar:
        ensure_installed()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "DJANGO_URL": self.django_url,
            "REDIS_URL": self.redis_url,
            "ALLOWED_ORIGINS": ",".join(self.origins),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["node", "server.js"], cwd=NODE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline:
                self.stop()
                raise SidecarUnavailable(f"the side-car did not answer within {START_TIMEOUT:.0f} s:\n{self.tail()}")
            time.sleep(0.05)  # a starting process, outside any event loop
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SidecarUnavailable(f"the side-car exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
