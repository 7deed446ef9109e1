"""compose.yaml cannot be started here (no Docker engine), so check it against the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.common.settings import ApiSettings, ExecutorSettings, InfraSettings, SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {
    "api": "services.api",
    "scheduler": "services.scheduler",
    "executor": "services.executor",
}
SETTINGS_BY_PREFIX: list[tuple[str, type[BaseSettings]]] = [
    ("INDEXIFY_API_", ApiSettings),
    ("INDEXIFY_SCHEDULER_", SchedulerSettings),
    ("INDEXIFY_EXECUTOR_", ExecutorSettings),
    ("INDEXIFY_", InfraSettings),
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def test_stack_has_every_part(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= {"kafka", "redis", "minio", "init", *APP_SERVICES}


@pytest.mark.parametrize("name", [*APP_SERVICES, "init"])
def test_commands_name_modules_that_exist(compose: dict[str, Any], name: str) -> None:
    command = _services(compose)[name]["command"]
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    if name in APP_SERVICES:
        assert module == APP_SERVICES[name]
        assert importlib.util.find_spec(f"{module}.__main__") is not None


def _settings_field(variable: str) -> tuple[type[BaseSettings], str]:
    for prefix, settings in SETTINGS_BY_PREFIX:
        if variable.startswith(prefix):
            return settings, variable[len(prefix) :].lower()
    raise AssertionError(f"{variable} has no INDEXIFY_ prefix")


@pytest.mark.parametrize("name", [*APP_SERVICES, "init"])
def test_environment_variables_are_real_settings(compose: dict[str, Any], name: str) -> None:
    env = _services(compose)[name]["environment"]
    assert env, f"{name} has no environment"
    for variable in env:
        settings, field = _settings_field(variable)
        assert field in settings.model_fields, f"{name}: {variable} is not a field of {settings}"


def test_infrastructure_addresses_point_at_compose_services(compose: dict[str, Any]) -> None:
    services = _services(compose)
    env = services["api"]["environment"]
    kafka_host = env["INDEXIFY_KAFKA_BOOTSTRAP"]
    assert (
        f"PLAINTEXT://{kafka_host}"
        == services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    assert urlparse(env["INDEXIFY_REDIS_URL"]).hostname in services
    assert env["INDEXIFY_MINIO_ENDPOINT"].split(":")[0] in services
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "--appendonly yes" in " ".join(services["redis"]["command"])


_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` as compose expands it with ``env`` (``${X:-default}``, ``${X:?error}``)."""

    def expand(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise LookupError(f"{name} is required: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(expand, text)


def test_api_port_matches_settings_and_healthcheck(compose: dict[str, Any]) -> None:
    api = _services(compose)["api"]
    port = int(api["environment"]["INDEXIFY_API_PORT"])
    assert port == ApiSettings().port == 8900
    assert [_interpolate(p, {}) for p in api["ports"]] == [f"127.0.0.1:{port}:{port}"]
    probe = " ".join(api["healthcheck"]["test"])
    assert re.search(rf":{port}/health\b", probe), probe


def test_api_serves_the_health_route_the_healthcheck_uses() -> None:
    from services.api.app import create_app

    app = create_app(InfraSettings(), ApiSettings())
    paths = {getattr(route, "path", None) for route in app.routes}
    assert "/health" in paths


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if name != "init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_executors_scale_with_replicas(compose: dict[str, Any]) -> None:
    assert _services(compose)["executor"]["deploy"]["replicas"] >= 1


def test_services_wait_for_the_init_job(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = _services(compose)[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully"


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source.rstrip("/")).exists(), f"Dockerfile copies missing {source}"


def test_the_api_is_exposed_only_when_asked(compose: dict[str, Any]) -> None:
    (mapping,) = _services(compose)["api"]["ports"]
    assert _interpolate(mapping, {}).startswith("127.0.0.1:")  # loopback by default
    assert _interpolate(mapping, {"INDEXIFY_API_BIND": "0.0.0.0"}) == "0.0.0.0:8900:8900"
    assert "INDEXIFY_API_BIND=0.0.0.0" in (ROOT / "compose.yaml").read_text()  # documented


_CREDENTIALS = ("INDEXIFY_REDIS_PASSWORD", "INDEXIFY_MINIO_ACCESS_KEY", "INDEXIFY_MINIO_SECRET_KEY")


def test_backend_credentials_are_required_and_never_defaults(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert "minioadmin" not in text
    services = _services(compose)
    minio = services["minio"]["environment"]
    redis = services["redis"]["environment"]
    for value in (*minio.values(), *redis.values()):
        with pytest.raises(LookupError, match="is required"):
            _interpolate(value, {})
    given = {name: f"secret-{i}" for i, name in enumerate(_CREDENTIALS)}
    assert _interpolate(minio["MINIO_ROOT_USER"], given) == "secret-1"
    assert _interpolate(minio["MINIO_ROOT_PASSWORD"], given) == "secret-2"
    for name in [*APP_SERVICES, "init"]:
        env = services[name]["environment"]
        for variable in _CREDENTIALS:
            assert _interpolate(env[variable], given) == given[variable], (name, variable)
            with pytest.raises(LookupError):
                _interpolate(env[variable], {})


def test_redis_requires_its_password_and_disables_config(compose: dict[str, Any]) -> None:
    redis = _services(compose)["redis"]
    command = " ".join(redis["command"])
    assert "requirepass" in command and "$$REDIS_PASSWORD" in command
    assert 'rename-command CONFIG ""' in command
    assert "--protected-mode yes" in command
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])


def test_probes_of_our_services_use_the_settings_credentials(compose: dict[str, Any]) -> None:
    for name in ("scheduler", "executor"):
        probe = " ".join(_services(compose)[name]["healthcheck"]["test"])
        assert "InfraSettings" in probe and "redis_url" in probe, name


def test_executors_run_as_root_so_their_workers_drop_to_an_unprivileged_user(
    compose: dict[str, Any],
) -> None:
    executor = _services(compose)["executor"]
    assert executor["user"] == "root"
    worker_user = executor["environment"]["INDEXIFY_EXECUTOR_WORKER_USER"]
    assert worker_user not in ("", "root", "0")
    assert ExecutorSettings().worker_user == "nobody"


def test_kafka_keeps_its_logs_on_the_volume(compose: dict[str, Any]) -> None:
    """The broker's data survives a container's re-creation: ``KAFKA_LOG_DIRS`` is where the
    named volume is mounted (unset, the image writes to a directory of the container)."""
    kafka = _services(compose)["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {entry.split(":")[1]: entry.split(":")[0] for entry in kafka["volumes"]}
    assert log_dirs in mounts, f"KAFKA_LOG_DIRS={log_dirs} is not a mounted volume: {mounts}"
    assert mounts[log_dirs] in compose["volumes"], "the mount must be a named volume"


def test_the_cluster_override_has_three_brokers_and_two_schedulers(
    compose: dict[str, Any],
) -> None:
    """compose.cluster.yaml (over compose.yaml): three KRaft nodes with one quorum, one cluster
    id, distinct node ids, listeners and volumes; every service of ours bootstraps from all
    three; two schedulers."""
    cluster = yaml.safe_load((ROOT / "compose.cluster.yaml").read_text())
    services = cluster["services"]
    base_kafka = _services(compose)["kafka"]["environment"]
    nodes = {
        "kafka": {**base_kafka, **services["kafka"]["environment"]},
        "kafka-2": {**base_kafka, **services["kafka-2"]["environment"]},
        "kafka-3": {**base_kafka, **services["kafka-3"]["environment"]},
    }
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in nodes.values()}
    assert voters == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in nodes.values()) == [1, 2, 3]
    for name, env in nodes.items():
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
    for name in ("kafka-2", "kafka-3"):
        assert services[name]["extends"] == {"file": "compose.yaml", "service": "kafka"}
        (mount,) = services[name]["volumes"]
        assert mount == f"{name}-data:{base_kafka['KAFKA_LOG_DIRS']}"
        assert f"{name}-data" in cluster["volumes"]
    for name in APP_SERVICES.keys() | {"init"}:
        bootstrap = services[name]["environment"]["INDEXIFY_KAFKA_BOOTSTRAP"]
        assert bootstrap == "kafka:9092,kafka-2:9092,kafka-3:9092"
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert set(services["init"]["depends_on"]) == {"kafka", "kafka-2", "kafka-3"}
