"""A Redis Sentinel set for tests: a master, a replica and three sentinels on free
loopback ports, with config files in a temp dir, stopped by their PIDs.

`SentinelSet.start()` returns once every sentinel names the master, sees the replica
(linked and in sync) and the two other sentinels; `kill_master()` SIGKILLs the master
and `wait_promotion()` waits until every sentinel names the replica instead. Timings are
`time.monotonic()` seconds, so a test can print kill → promotion → convergence.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from core.redis_local import free_port, redis_server_binary
from tests.processes import stop_process
from tests.waiting import wait_until

MASTER_NAME = "jobstream"
SENTINELS = 3
QUORUM = 2  # sentinels that must agree the master is down: a majority of three
# Low enough for a test: the master counts as down after a second without a reply.
DOWN_AFTER_MS = 1000
# Short, so that a failover that stalls (a vote split) is retried within seconds.
FAILOVER_TIMEOUT_MS = 3000
READY_TIMEOUT = 30.0  # seconds for the set to agree on the master, its replica and each other
PROMOTION_TIMEOUT = 30.0  # seconds from the kill for every sentinel to name the replica
CLIENT_TIMEOUT = 1.0  # seconds for one question to a server of the set


@dataclass
class Node:
    """One redis-server of the set (a data node or a sentinel)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=password,
            socket_timeout=CLIENT_TIMEOUT,
            socket_connect_timeout=CLIENT_TIMEOUT,
            decode_responses=True,
        )

    def ask(self, *command: str | int, password: str | None = None) -> object:
        client = self.client(password)
        try:
            return client.execute_command(*command)
        finally:
            client.close()


@dataclass
class SentinelSet:
    """A master, a replica and SENTINELS sentinels; `password` (optional) protects the
    data nodes (`requirepass`, `masterauth`, `sentinel auth-pass`) and `sentinel_password`
    the sentinels themselves."""

    password: str | None = None
    sentinel_password: str | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jobstream-sentinel-")))
    master: Node | None = None
    replica: Node | None = None
    sentinels: list[Node] = field(default_factory=list)
    killed_at: float | None = None

    # --- what the product is given -------------------------------------------------

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS: `host:port,…`."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def env(self, *, db: int = 0) -> dict[str, str]:
        """The environment that puts a process's Redis on this set (docs/deploy.md)."""
        env = {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": MASTER_NAME, "REDIS_DB": str(db)}
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    # --- starting and stopping -----------------------------------------------------

    def start(self) -> SentinelSet:
        try:
            self.master = self._data_node("master")
            self.replica = self._data_node("replica", replica_of=self.master.port)
            self.sentinels = [self._sentinel(index) for index in range(1, SENTINELS + 1)]
            for node in self.sentinels:  # started side by side: each takes a second or so to answer
                self._wait_answers(node, self.sentinel_password)
            if not wait_until(self._ready, timeout=READY_TIMEOUT, interval=0.1):
                raise RuntimeError(f"the sentinel set did not settle within {READY_TIMEOUT:.0f} s:\n{self.tails()}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes():
            if node.process.poll() is None:
                node.process.terminate()  # all at once, so they stop in parallel
        for node in self.nodes():
            stop_process(node.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def nodes(self) -> list[Node]:
        return [node for node in (self.master, self.replica, *self.sentinels) if node is not None]

    def tails(self) -> str:
        return "\n".join(f"--- {node.name}\n{node.log.read_text(errors='replace')[-1500:]}" for node in self.nodes())

    def _spawn(self, name: str, port: int, command: list[str]) -> Node:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        return Node(name=name, port=port, process=process, log=log)

    def _data_node(self, name: str, *, replica_of: int | None = None) -> Node:
        port = free_port()
        command = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.workdir)]
        command += ["--dbfilename", f"{name}.rdb", "--save", "", "--appendonly", "no", "--loglevel", "notice"]
        command += ["--repl-diskless-sync-delay", "0"]  # the replica syncs at once, not after 5 s
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(replica_of)]
        node = self._spawn(name, port, command)
        self._wait_answers(node, self.password)
        return node

    def _sentinel(self, index: int) -> Node:
        assert self.master is not None
        port = free_port()
        config = self.workdir / f"sentinel-{index}.conf"  # a sentinel rewrites its own file: one each
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            f"dir {self.workdir}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        config.write_text("\n".join(lines) + "\n")
        return self._spawn(f"sentinel-{index}", port, [redis_server_binary(), str(config), "--sentinel"])

    def _wait_answers(self, node: Node, password: str | None) -> None:
        if not wait_until(lambda: self._answers(node, password), timeout=READY_TIMEOUT, interval=0.05):
            raise RuntimeError(f"{node.name} did not answer PING:\n{node.log.read_text(errors='replace')}")

    @staticmethod
    def _answers(node: Node, password: str | None) -> bool:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} exited at start:\n{node.log.read_text(errors='replace')}")
        try:
            return node.ask("PING", password=password) is True
        except (redis.RedisError, OSError):
            return False

    # --- what the sentinels say ----------------------------------------------------

    def master_port_by(self, sentinel: Node) -> int | None:
        """The master's port as one sentinel names it; None when it does not answer."""
        try:
            answer = sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME, password=self.sentinel_password)
        except (redis.RedisError, OSError):
            return None
        return int(answer[1]) if isinstance(answer, list | tuple) and len(answer) == 2 else None

    def _ready(self) -> bool:
        """Every sentinel names the master (up), a replica in sync and the other sentinels;
        and the replica has the master's data (its link is up)."""
        assert self.master is not None and self.replica is not None
        try:
            replication = self.replica.ask("INFO", "replication", password=self.password)
        except (redis.RedisError, OSError):
            return False
        if not isinstance(replication, dict) or replication.get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            client = sentinel.client(self.sentinel_password)
            try:
                state = client.sentinel_master(MASTER_NAME)
                replicas = client.sentinel_slaves(MASTER_NAME)
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
            if int(state["port"]) != self.master.port or not state["is_master"] or state["is_sdown"]:
                return False
            if int(state["num-other-sentinels"]) != SENTINELS - 1:
                return False
            linked = [r for r in replicas if int(r["port"]) == self.replica.port and r["master-link-status"] == "ok"]
            if not linked or linked[0]["is_sdown"]:
                return False
        return True

    # --- the failover -------------------------------------------------------------

    def kill_master(self) -> float:
        """SIGKILLs the master (no goodbye to any client, as when its host dies); the time of the kill."""
        assert self.master is not None
        self.master.process.send_signal(signal.SIGKILL)
        self.master.process.wait(timeout=5)
        self.killed_at = time.monotonic()
        return self.killed_at

    def wait_promotion(self, timeout: float = PROMOTION_TIMEOUT) -> float:
        """Waits until every sentinel names the replica as the master and the replica says
        it is one; the time the first sentinel named it (from then on a client asking the
        sentinels in turn finds the new master: one that still names the dead master
        flags it down, and redis-py passes over such an answer)."""
        assert self.replica is not None
        replica = self.replica
        first: list[float] = []

        def promoted() -> bool:
            naming = [self.master_port_by(sentinel) == replica.port for sentinel in self.sentinels]
            if any(naming) and not first:
                first.append(time.monotonic())
            if not all(naming):
                return False
            try:
                return replica.ask("ROLE", password=self.password)[0] == "master"  # type: ignore[index]
            except (redis.RedisError, OSError):
                return False

        if not wait_until(promoted, timeout=timeout, interval=0.05):
            raise AssertionError(f"no promotion within {timeout:.0f} s of the kill:\n{self.tails()}")
        return first[0]
