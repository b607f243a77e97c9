"""Debian's nginx running deploy/nginx.conf, the file operators install, for tests.

The file is filled in as its header says (only the ${JOBSTREAM_...} markers), put in
an `http` block of a configuration of the test's own (its temp paths, its log, no
daemon) and started as a child process, stopped by its PID. The benchmarks
(bench/fanout.py --proxy) start it the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import psutil

from core.redis_local import free_port
from tests.processes import stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
NGINX = Path(os.environ.get("NGINX_PATH", "/usr/sbin/nginx"))
CONFIG = ROOT / "deploy" / "nginx.conf"
MARKER = re.compile(r"\$\{(JOBSTREAM_[A-Z_]+)\}")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # nginx's defaults are under /var/lib/nginx
START_TIMEOUT = 10.0  # seconds for nginx to answer once started


def render(template: str, values: dict[str, str]) -> str:
    """The template with each ${JOBSTREAM_...} marker replaced (envsubst with a filter);
    a marker without a value is an error, as it would leave nginx a broken file."""
    missing = sorted(set(MARKER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return MARKER.sub(lambda match: values[match.group(1)], template)


def markers(template: str) -> set[str]:
    return set(MARKER.findall(template))


class NginxProcess:
    """nginx on 127.0.0.1:<free port> in front of `upstreams` (host:port each)."""

    def __init__(
        self, *, upstreams: list[str], media_root: Path, workdir: Path, worker_connections: int = 1024
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"
        site = render(
            CONFIG.read_text(),
            {
                "JOBSTREAM_LISTEN": f"127.0.0.1:{self.port}",
                "JOBSTREAM_SERVER_NAME": "127.0.0.1 localhost",
                "JOBSTREAM_UPSTREAM_SERVERS": " ".join(f"server {upstream};" for upstream in upstreams),
                "JOBSTREAM_MEDIA_ROOT": str(media_root),
            },
        )
        (workdir / "jobstream.conf").write_text(site)
        temp = workdir / "temp"
        temp.mkdir(exist_ok=True)
        # As root, nginx's workers would run as nobody, who cannot read the test's
        # MEDIA_ROOT under a private temp directory: they run as this user instead.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (workdir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            # A proxied socket takes two connections (client and upstream) and a file each.
            f"worker_rlimit_nofile {2 * worker_connections + 64};\n"
            f"events {{ worker_connections {worker_connections}; }}\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            + "".join(f"    {kind}_temp_path {temp / kind};\n" for kind in TEMP_PATHS)
            + "    include /etc/nginx/mime.types;\n"
            f"    include {workdir / 'jobstream.conf'};\n"
            "}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the configuration: what nginx itself says of the file."""
        return subprocess.run(
            [str(NGINX), "-t", "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self) -> None:
        with (self.workdir / "nginx.out").open("wb") as out:
            self.process = subprocess.Popen(
                [str(NGINX), "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_until(self.answers, timeout=START_TIMEOUT, interval=0.05):
            self.stop()
            raise RuntimeError(f"nginx did not answer within {START_TIMEOUT:.0f} s:\n{self.logs()}")

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/api/job-kinds/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def pids(self) -> list[int]:
        """The master's and its workers' (what the benchmarks count CPU of)."""
        assert self.process is not None
        master = psutil.Process(self.process.pid)
        return [master.pid, *(child.pid for child in master.children())]

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-3000:]
            for path in (self.workdir / "nginx.out", self.error_log)
            if path.is_file()
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
