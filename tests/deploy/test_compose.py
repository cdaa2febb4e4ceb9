"""compose.yaml and the Dockerfile, checked without a container engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.streams import Stage

ROOT = Path(__file__).resolve().parents[2]
STAGES = {stage.value for stage in Stage}
PYTHON_SERVICES = {"api", "migrate", "models"} | STAGES
DUMMY_SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "REDIS_PASSWORD": "redis-pass",
    "MINIO_ROOT_USER": "root-user",
    "MINIO_ROOT_PASSWORD": "password1",
    "FECAPASS_S3_ACCESS_KEY": "app-user",
    "FECAPASS_S3_SECRET_KEY": "app-secret",
    "FECAPASS_WEBHOOK_SECRET": "hook-secret",
}
MINIO_SERVICES = {"minio", "minio_init"}  # the only ones that may see the MinIO root credentials


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The configuration as `docker compose config` resolves it (anchors, merges, variables)."""
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        env={**os.environ, **DUMMY_SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_config_is_valid() -> None:
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        env={**os.environ, **DUMMY_SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in DUMMY_SECRETS}
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "--env-file", "/dev/null", "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "db_main", "db_vector", "minio", "minio_init"} | PYTHON_SERVICES == set(services)
    assert services["db_main"]["image"] == "postgres:18"
    assert services["db_vector"]["image"] == "pgvector/pgvector:pg18"
    assert services["redis"]["image"].startswith("redis:")
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    # Transient photos live in Redis: it must refuse writes when full, never evict a job's photo or entry.
    assert "--maxmemory-policy noeviction" in " ".join(services["redis"]["command"])
    assert services["minio"]["image"].startswith("minio/minio:")


def test_every_python_service_uses_the_one_build(compose: dict[str, Any]) -> None:
    builds = {json.dumps(compose["services"][name]["build"], sort_keys=True) for name in PYTHON_SERVICES}
    images = {compose["services"][name]["image"] for name in PYTHON_SERVICES}
    assert len(builds) == 1 and len(images) == 1
    for stage in STAGES:
        assert compose["services"][stage]["command"] == ["fecapass", "worker", stage]


def test_stateful_services_have_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    for service in ("db_main", "db_vector", "redis", "minio"):
        mounts = compose["services"][service]["volumes"]
        assert any(m["type"] == "volume" and m["source"] in named for m in mounts), service
    assert any(m["source"] == "models" for m in compose["services"]["embed"]["volumes"])


def test_only_the_api_is_published(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert [p["target"] for p in published.pop("api")] == [8000]
    assert published["minio"][0]["host_ip"] == "127.0.0.1"  # the console, on this host only
    assert set(published) == {"minio"}


def test_stages_can_scale(compose: dict[str, Any]) -> None:
    for stage in STAGES:
        service = compose["services"][stage]
        assert "container_name" not in service and "ports" not in service  # `--scale stage=3` must work


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    one_shots = {"minio_init", "models", "migrate"}
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert rule["condition"] == expected, (name, dependency)
            if expected == "service_healthy":
                assert "healthcheck" in services[dependency] and not services[dependency]["healthcheck"].get("disable")
    assert {"db_main", "db_vector", "redis", "minio"} <= set(services["api"]["depends_on"])
    assert {"db_main", "db_vector"} <= set(services["index"]["depends_on"])
    for name in ("redis", "db_main", "db_vector", "minio", "api", *STAGES):
        assert services[name]["healthcheck"]["test"], name


def test_network_is_fecapass_network(compose: dict[str, Any]) -> None:
    assert compose["networks"]["fecapass-network"]["name"] == "fecapass-network"
    for name, service in compose["services"].items():
        assert set(service["networks"]) == {"fecapass-network"}, name


def test_services_get_every_secret_from_the_environment(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    text = json.dumps(raw)
    assert "password1" not in text and not re.search(r"PASSWORD[\"']?:\s*[\"'][^$]", text)
    env = compose["services"]["api"]["environment"]
    for variable in (
        "FECAPASS_MAIN_DB_DSN",
        "FECAPASS_VECTOR_DB_DSN",
        "FECAPASS_REDIS_URL",
        "FECAPASS_S3_ACCESS_KEY",
        "FECAPASS_S3_SECRET_KEY",
    ):
        assert variable in env


def test_app_services_never_get_the_minio_root_credentials(compose: dict[str, Any]) -> None:
    root = {DUMMY_SECRETS["MINIO_ROOT_USER"], DUMMY_SECRETS["MINIO_ROOT_PASSWORD"]}
    for name, service in compose["services"].items():
        if name in MINIO_SERVICES:
            continue
        env = service.get("environment", {})
        assert not [key for key in env if key.startswith("MINIO_")], name
        assert not [key for key, value in env.items() if any(secret in str(value) for secret in root)], name
    for name in PYTHON_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["FECAPASS_S3_ACCESS_KEY"] == DUMMY_SECRETS["FECAPASS_S3_ACCESS_KEY"], name
        assert env["FECAPASS_S3_SECRET_KEY"] == DUMMY_SECRETS["FECAPASS_S3_SECRET_KEY"], name


def test_minio_init_gives_the_app_user_its_bucket_only(compose: dict[str, Any]) -> None:
    init = compose["services"]["minio_init"]
    script = " ".join(init["command"])
    assert init["environment"]["FECAPASS_S3_ACCESS_KEY"] == DUMMY_SECRETS["FECAPASS_S3_ACCESS_KEY"]
    assert 'mc admin user add local "$$FECAPASS_S3_ACCESS_KEY" "$$FECAPASS_S3_SECRET_KEY"' in script
    assert 'mc admin policy attach local fecapass-app --user "$$FECAPASS_S3_ACCESS_KEY"' in script
    policy = json.loads(script.split("<<EOF", 1)[1].split("EOF", 1)[0])
    bucket = "arn:aws:s3:::$$FECAPASS_S3_BUCKET"
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement["Resource"]) <= {bucket, f"{bucket}/*"}, statement
        assert all(action.startswith("s3:") and "*" not in action for action in statement["Action"]), statement
    for name in PYTHON_SERVICES - {"models", "migrate"}:  # these two never touch S3
        if name != "webhook":
            assert "minio_init" in compose["services"][name]["depends_on"], name


def test_redis_requires_a_password(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    script = " ".join(redis["command"])
    assert "requirepass" in script and "$$REDIS_PASSWORD" in script
    # On the server's command line every process of the host could read it: it goes in a config file.
    server_args = script.split("exec ", 1)[1]
    assert "REDIS_PASSWORD" not in server_args and "--requirepass" not in server_args
    assert redis["environment"]["REDIS_PASSWORD"] == DUMMY_SECRETS["REDIS_PASSWORD"]
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    for name in PYTHON_SERVICES:
        url = compose["services"][name]["environment"]["FECAPASS_REDIS_URL"]
        assert url.startswith(f"redis://:{DUMMY_SECRETS['REDIS_PASSWORD']}@redis:"), name


def test_stage_metrics_listen_for_the_scraper(compose: dict[str, Any]) -> None:
    for stage in STAGES:
        assert compose["services"][stage]["environment"]["FECAPASS_METRICS_HOST"] == "0.0.0.0"


def test_hadolint_clean_at_warning_level() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    runtime = text.split(f"AS {stages[-1]}", 1)[1]
    assert "build-essential" not in runtime and "apt-get" not in runtime
    assert re.search(r"^USER\s+(?!root|0\b)\S+", runtime, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK\s", runtime, flags=re.MULTILINE)
    assert not re.search(r"(SECRET|PASSWORD|ACCESS_KEY)\s*=", text)
