"""Where Redis is, read from the environment (core/redis_topology.py): one Redis, shards of
the channel layer, or Sentinel; and every malformed value stops start-up naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from core.redis_topology import (
    DEFAULT_REDIS_URL,
    DEFAULT_SENTINEL_MASTER,
    SENTINEL_TIMEOUT,
    RedisTopology,
    Sentinels,
    redacted_url,
    redis_topology_from_env,
)

ROOT = Path(__file__).resolve().parents[2]
SENTINEL_KWARGS = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
SENTINEL_ENV = {
    "REDIS_SENTINELS": "10.0.0.5:26379,sentinel-b:26380",
    "REDIS_SENTINEL_MASTER": "jobstream",
    "REDIS_PASSWORD": "p@ss:w/rd",
    "REDIS_SENTINEL_PASSWORD": "s3cret",
    "REDIS_DB": "2",
}


def error_of(env: dict[str, str]) -> str:
    with pytest.raises(RuntimeError) as raised:
        redis_topology_from_env(env)
    return str(raised.value)


# --- one Redis --------------------------------------------------------------------------


def test_nothing_set_is_the_local_redis_for_everything() -> None:
    topology = redis_topology_from_env({})

    assert topology == RedisTopology(redis_url=DEFAULT_REDIS_URL)
    assert topology.channel_hosts() == [{"address": DEFAULT_REDIS_URL}]
    assert topology.main_host() == {"address": DEFAULT_REDIS_URL}
    assert topology.celery(None).url == DEFAULT_REDIS_URL
    assert topology.celery(None).transport_options == {}


def test_an_empty_redis_url_is_the_default() -> None:
    assert redis_topology_from_env({"REDIS_URL": " "}).redis_url == DEFAULT_REDIS_URL


def test_redis_url_is_the_layer_the_quotas_and_celery() -> None:
    url = "redis://:pw@redis:6379/3"
    topology = redis_topology_from_env({"REDIS_URL": url})

    assert topology.channel_hosts() == [{"address": url}]
    assert topology.main_host() == {"address": url}
    assert topology.celery(None).url == url


def test_an_explicit_celery_url_wins() -> None:
    topology = redis_topology_from_env({"REDIS_URL": "redis://a:6379/0"})

    assert topology.celery("redis://broker:6379/1").url == "redis://broker:6379/1"


@pytest.mark.parametrize("url", ["rediss://:pw@cache.example.com:6380/0", "unix:///run/redis.sock?db=1", "redis://h"])
def test_redis_url_takes_every_redis_scheme(url: str) -> None:
    assert redis_topology_from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://redis:6379/0", "has the scheme 'http'"),
        ("redis:///0", "names no host"),
        ("redis://redis:0/0", "has port 0"),
        ("redis://redis:99999/0", "is not a Redis URL"),
        ("redis://redis:port/0", "is not a Redis URL"),
        ("redis://redis:6379/zero", "has the database 'zero'"),
        ("unix://", "names no socket path"),
        ("localhost:6379", "has the scheme 'localhost'"),
    ],
)
def test_a_malformed_redis_url_is_named(url: str, complaint: str) -> None:
    message = error_of({"REDIS_URL": url})

    assert message.startswith("REDIS_URL: ")
    assert complaint in message
    assert "redis://[:password@]host[:port][/db]" in message


def test_a_password_never_shows_in_a_message() -> None:
    message = error_of({"REDIS_URL": "http://:hunter2@redis:6379/0"})

    assert "hunter2" not in message
    assert "http://:***@redis:6379/0" in message


def test_redacted_url_keeps_the_user_and_hides_the_password() -> None:
    assert redacted_url("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert redacted_url("redis://h:1/0") == "redis://h:1/0"


# --- shards -------------------------------------------------------------------------------


def test_channel_redis_urls_are_the_layer_shards_in_order() -> None:
    env = {"REDIS_URL": "redis://main:6379/0", "CHANNEL_REDIS_URLS": "redis://s1:6379/0, redis://s2:6379/0,unix:///s3"}
    topology = redis_topology_from_env(env)

    assert topology.shard_urls == ("redis://s1:6379/0", "redis://s2:6379/0", "unix:///s3")
    assert topology.channel_hosts() == [
        {"address": "redis://s1:6379/0"},
        {"address": "redis://s2:6379/0"},
        {"address": "unix:///s3"},
    ]
    # What does not shard stays on REDIS_URL.
    assert topology.main_host() == {"address": "redis://main:6379/0"}
    assert topology.celery(None).url == "redis://main:6379/0"


@pytest.mark.parametrize("value", ["redis://s1:6379/0,,redis://s2:6379/0", "redis://s1:6379/0,", ",redis://s1"])
def test_an_empty_shard_is_named(value: str) -> None:
    message = error_of({"CHANNEL_REDIS_URLS": value})

    assert message.startswith("CHANNEL_REDIS_URLS has an empty item")
    assert "redis://10.0.0.31:6379/0,redis://10.0.0.32:6379/0" in message


def test_a_malformed_shard_is_named_with_its_value() -> None:
    message = error_of({"CHANNEL_REDIS_URLS": "redis://s1:6379/0,tcp://:hunter2@s2:6379"})

    assert message.startswith("CHANNEL_REDIS_URLS: 'tcp://:***@s2:6379' has the scheme 'tcp'")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "value",
    [
        "redis://s1:6379/0,redis://s1:6379/0",
        "redis://s1:6379/0,redis://S1/1",  # the default port; pub/sub ignores the database
        "unix:///run/r.sock,unix:///run/r.sock?db=2",
    ],
)
def test_one_redis_listed_twice_is_refused(value: str) -> None:
    message = error_of({"CHANNEL_REDIS_URLS": value})

    assert message.startswith("CHANNEL_REDIS_URLS lists one Redis twice")


def test_the_same_host_on_other_ports_is_two_shards() -> None:
    topology = redis_topology_from_env({"CHANNEL_REDIS_URLS": "redis://h:6379,redis://h:6380"})

    assert len(topology.channel_hosts()) == 2


def test_shards_and_sentinels_together_are_refused_naming_both() -> None:
    message = error_of({"CHANNEL_REDIS_URLS": "redis://s1:6379/0", "REDIS_SENTINELS": "s:26379"})

    assert "CHANNEL_REDIS_URLS and REDIS_SENTINELS are both set" in message


# --- Sentinel -----------------------------------------------------------------------------


def test_sentinels_are_read_whole() -> None:
    topology = redis_topology_from_env({**SENTINEL_ENV, "REDIS_URL": "redis://ignored:6379/0"})

    assert topology.sentinels == Sentinels(
        addresses=(("10.0.0.5", 26379), ("sentinel-b", 26380)),
        master="jobstream",
        password="p@ss:w/rd",
        sentinel_password="s3cret",
        db=2,
    )


def test_with_sentinels_every_use_goes_to_the_master() -> None:
    topology = redis_topology_from_env({**SENTINEL_ENV, "REDIS_URL": "redis://ignored:6379/0"})
    master = {
        "sentinels": [("10.0.0.5", 26379), ("sentinel-b", 26380)],
        "master_name": "jobstream",
        "sentinel_kwargs": {**SENTINEL_KWARGS, "password": "s3cret"},
        "password": "p@ss:w/rd",
        "db": 2,
    }

    assert topology.channel_hosts() == [master]
    assert topology.main_host() == master
    celery = topology.celery(None)
    assert celery.url == "sentinel://:p%40ss%3Aw%2Frd@10.0.0.5:26379/2;sentinel://:p%40ss%3Aw%2Frd@sentinel-b:26380/2"
    assert celery.transport_options == {
        "master_name": "jobstream",
        "sentinel_kwargs": {**SENTINEL_KWARGS, "password": "s3cret"},
    }


def test_an_explicit_celery_url_wins_over_the_sentinels() -> None:
    topology = redis_topology_from_env(SENTINEL_ENV)

    assert topology.celery("redis://broker:6379/1").url == "redis://broker:6379/1"
    assert topology.celery("redis://broker:6379/1").transport_options == {}


def test_kombu_reads_the_password_and_db_of_the_sentinel_url() -> None:
    # What kombu's Sentinel transport connects with (Channel._connparams reads these).
    url = redis_topology_from_env(SENTINEL_ENV).celery(None).url
    connection = Connection(url)

    assert connection.transport_cls == "sentinel"
    assert connection.password == "p@ss:w/rd"
    assert connection.virtual_host == "2"
    assert [Connection(alt).hostname for alt in connection.alt] == ["10.0.0.5", "sentinel-b"]


def test_celery_reads_the_password_and_db_of_the_sentinel_url() -> None:
    from celery import Celery
    from celery.backends.redis import SentinelBackend

    env = redis_topology_from_env(SENTINEL_ENV).celery(None)
    app = Celery(set_as_current=False)
    app.conf.result_backend_transport_options = env.transport_options
    connparams = SentinelBackend(app=app, url=env.url).connparams  # type: ignore[attr-defined]

    assert connparams["password"] == "p@ss:w/rd"
    assert connparams["db"] == 2
    assert [(host["host"], host["port"]) for host in connparams["hosts"]] == [
        ("10.0.0.5", 26379),
        ("sentinel-b", 26380),
    ]


def test_sentinel_defaults_master_db_and_no_passwords() -> None:
    topology = redis_topology_from_env({"REDIS_SENTINELS": "s:26379"})

    assert topology.sentinels == Sentinels(
        addresses=(("s", 26379),), master=DEFAULT_SENTINEL_MASTER, password=None, sentinel_password=None, db=0
    )
    assert topology.main_host() == {
        "sentinels": [("s", 26379)],
        "master_name": DEFAULT_SENTINEL_MASTER,
        "sentinel_kwargs": SENTINEL_KWARGS,
        "db": 0,
    }
    assert topology.celery(None).url == "sentinel://s:26379/0"


def test_ipv6_sentinels_take_brackets() -> None:
    topology = redis_topology_from_env({"REDIS_SENTINELS": "[fd00::5]:26379"})

    assert topology.sentinels is not None
    assert topology.sentinels.addresses == (("fd00::5", 26379),)
    assert topology.celery(None).url == "sentinel://[fd00::5]:26379/0"


@pytest.mark.parametrize(
    "item", ["s", "s:", ":26379", "s:0", "s:65536", "s:port", "s:²", "fd00::5:26379", "[fd00::5]", "[fd00::5]26379"]
)
def test_a_malformed_sentinel_is_named(item: str) -> None:
    message = error_of({"REDIS_SENTINELS": f"ok:26379,{item}"})

    assert message.startswith(f"REDIS_SENTINELS: {item!r} is not a Sentinel address")
    assert "host:port with a port of 1 to 65535" in message


@pytest.mark.parametrize("value", ["s:26379,,t:26379", "s:26379,", ","])
def test_an_empty_sentinel_is_named(value: str) -> None:
    assert error_of({"REDIS_SENTINELS": value}).startswith("REDIS_SENTINELS has an empty item")


def test_a_sentinel_listed_twice_is_refused() -> None:
    assert "lists a Sentinel twice" in error_of({"REDIS_SENTINELS": "s:26379,s:26379"})


@pytest.mark.parametrize("master", [" ", "my master"])
def test_a_malformed_master_name_is_named(master: str) -> None:
    message = error_of({"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": master})

    assert message.startswith("REDIS_SENTINEL_MASTER: ")
    assert "sentinel monitor <name>" in message


@pytest.mark.parametrize("db", ["-1", "one", "1.5", "²"])
def test_a_malformed_db_is_named(db: str) -> None:
    message = error_of({"REDIS_SENTINELS": "s:26379", "REDIS_DB": db})

    assert message == f"REDIS_DB: {db!r} is not a database number; give a whole number of 0 or more."


@pytest.mark.parametrize("name", ["REDIS_SENTINEL_MASTER", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD", "REDIS_DB"])
def test_a_sentinel_setting_without_sentinels_is_named(name: str) -> None:
    message = error_of({name: "hunter2"})

    assert message.startswith(f"{name} is set without REDIS_SENTINELS")
    assert "hunter2" not in message


def test_every_sentinel_setting_without_sentinels_is_named() -> None:
    message = error_of(dict.fromkeys(["REDIS_PASSWORD", "REDIS_DB"], "1"))

    assert message.startswith("REDIS_PASSWORD, REDIS_DB are set without REDIS_SENTINELS")


# --- start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHANNEL_REDIS_URLS", "redis://s1:6379/0,,redis://s2", "CHANNEL_REDIS_URLS has an empty item"),
        ("REDIS_SENTINELS", "sentinel-a", "REDIS_SENTINELS: 'sentinel-a' is not a Sentinel address"),
    ],
)
def test_manage_py_check_stops_on_a_malformed_value_naming_it(variable: str, value: str, message: str) -> None:
    env = {**os.environ, variable: value}
    for name in ("CHANNEL_REDIS_URLS", "REDIS_SENTINELS", "REDIS_PASSWORD", "REDIS_DB", "REDIS_SENTINEL_MASTER"):
        if name != variable:
            env.pop(name, None)

    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode != 0
    assert message in result.stderr


SETTINGS_PROBE = (
    "import json; from django.conf import settings as s; print(json.dumps({"
    "'hosts': s.CHANNEL_LAYERS['default']['CONFIG']['hosts'], 'main': s.REDIS_HOST, 'redis_url': s.REDIS_URL, "
    "'broker': s.CELERY_BROKER_URL, 'broker_options': s.CELERY_BROKER_TRANSPORT_OPTIONS, "
    "'results': s.CELERY_RESULT_BACKEND, 'results_options': s.CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS}))"
)


def settings_with(**variables: str) -> dict[str, Any]:
    """The Redis settings of a fresh process started with these variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REDIS_", "CELERY_", "CHANNEL_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SETTINGS_PROBE],
        cwd=ROOT,
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_settings_shard_the_layer_and_keep_the_rest_on_redis_url() -> None:
    found = settings_with(REDIS_URL="redis://main:6379/1", CHANNEL_REDIS_URLS="redis://s1:6379/0,redis://s2:6379/0")

    assert found["hosts"] == [{"address": "redis://s1:6379/0"}, {"address": "redis://s2:6379/0"}]
    assert found["main"] == {"address": "redis://main:6379/1"}
    assert found["broker"] == found["results"] == "redis://main:6379/1"
    assert "master_name" not in found["broker_options"]
    assert found["results_options"] == {}


def test_settings_send_every_use_through_the_sentinels_but_an_explicit_broker() -> None:
    found = settings_with(**SENTINEL_ENV, CELERY_BROKER_URL="redis://broker:6379/0")

    master = {
        "sentinels": [["10.0.0.5", 26379], ["sentinel-b", 26380]],  # tuples, as JSON shows them
        "master_name": "jobstream",
        "sentinel_kwargs": {**SENTINEL_KWARGS, "password": "s3cret"},
        "db": 2,
        "password": "p@ss:w/rd",
    }
    assert found["hosts"] == [master]
    assert found["main"] == master
    assert found["broker"] == "redis://broker:6379/0"
    assert "master_name" not in found["broker_options"]
    assert found["broker_options"]["visibility_timeout"] > 2 * 60 * 60  # the usual options stay
    assert found["results"].startswith("sentinel://:p%40ss%3Aw%2Frd@10.0.0.5:26379/2;")
    assert found["results_options"] == {"master_name": "jobstream", "sentinel_kwargs": master["sentinel_kwargs"]}


def test_settings_give_the_broker_the_sentinel_transport_options() -> None:
    found = settings_with(REDIS_SENTINELS="s:26379")

    assert found["broker"] == "sentinel://s:26379/0"
    assert found["broker_options"]["master_name"] == DEFAULT_SENTINEL_MASTER
    assert found["broker_options"]["socket_connect_timeout"] == 3


def test_channel_layers_for_takes_a_url_or_shards_in_order() -> None:
    from core.settings import channel_layers_for

    sentinel = {"sentinels": [("s", 26379)], "master_name": "m"}
    assert channel_layers_for("redis://a:1/0")["default"]["CONFIG"] == {"hosts": [{"address": "redis://a:1/0"}]}
    assert channel_layers_for(["redis://a:1/0", sentinel])["default"]["CONFIG"] == {
        "hosts": [{"address": "redis://a:1/0"}, sentinel]
    }
