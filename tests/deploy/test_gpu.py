"""The GPU variants: compose.gpu.yaml over compose.yaml, and the Kubernetes gpu overlay."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.deploy.test_compose import DUMMY_SECRETS, ROOT, tool
from tests.deploy.test_kubernetes import by_kind, render

MODEL_STAGES = {"detect", "embed"}


@pytest.fixture(scope="module")
def gpu_compose() -> dict[str, Any]:
    files = ["-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "compose.gpu.yaml")]
    result = subprocess.run(
        [tool("docker-compose"), *files, "config", "--format", "json"],
        env={**os.environ, **DUMMY_SECRETS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_gpu_reserves_a_gpu_for_the_model_stages_only(gpu_compose: dict[str, Any]) -> None:
    services = gpu_compose["services"]
    for name, service in services.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name in MODEL_STAGES:
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
            assert service["environment"]["FECAPASS_ORT_PROVIDERS"] == "cuda"
            assert service["build"]["args"]["ONNXRUNTIME_GPU"] == "true"
            assert service["image"] == "fecapass:gpu"
        else:
            assert not devices, name


def test_compose_gpu_keeps_what_the_stages_had(gpu_compose: dict[str, Any]) -> None:
    """The override adds to compose.yaml's stages; it must not drop their secrets, health check or metrics."""
    for name in MODEL_STAGES:
        service = gpu_compose["services"][name]
        assert service["healthcheck"]["test"] == ["CMD", "fecapass", "healthcheck", "--heartbeat"]
        assert service["environment"]["FECAPASS_METRICS_PORT"] == "9100"
        assert service["environment"]["FECAPASS_S3_ACCESS_KEY"] == DUMMY_SECRETS["FECAPASS_S3_ACCESS_KEY"]


@pytest.fixture(scope="module")
def gpu_overlay() -> list[dict[str, Any]]:
    return render("gpu")


def test_kubernetes_gpu_overlay_limits_a_gpu_for_the_model_stages_only(gpu_overlay: list[dict[str, Any]]) -> None:
    for name, deployment in by_kind(gpu_overlay, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        limits = container.get("resources", {}).get("limits", {})
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        if name.removeprefix("fecapass-") in MODEL_STAGES:
            assert limits["nvidia.com/gpu"] == 1, name
            assert env["FECAPASS_ORT_PROVIDERS"] == "cuda"
            assert container["image"].endswith("-gpu")
        else:
            assert "nvidia.com/gpu" not in limits, name
            assert not container["image"].endswith("-gpu"), name


def test_kubernetes_gpu_overlay_validates(gpu_overlay: list[dict[str, Any]], tmp_path: Any) -> None:
    import shutil
    import sys
    from pathlib import Path

    import yaml

    core = [doc for doc in gpu_overlay if not doc["apiVersion"].startswith("keda.sh/")]
    manifest = Path(tmp_path) / "core.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if validator is None:
        pytest.skip("kubernetes-validate is not installed")
    result = subprocess.run([validator, "--strict", str(manifest)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
