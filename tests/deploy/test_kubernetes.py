"""The Kubernetes manifests render with kustomize, validate, and scale each stage on its own backlog."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import ObservabilitySettings
from schemas.streams import Stage

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render("production")


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_core_objects_validate(production: list[dict[str, Any]], tmp_path: Path) -> None:
    core = [doc for doc in production if not doc["apiVersion"].startswith("keda.sh/")]
    manifest = tmp_path / "core.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if validator is None:
        pytest.skip("kubernetes-validate is not installed")
    result = subprocess.run([validator, "--strict", str(manifest)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_and_every_stage_are_deployments(production: list[dict[str, Any]]) -> None:
    deployments = by_kind(production, "Deployment")
    assert set(deployments) == {"fecapass-api"} | {f"fecapass-{stage.value}" for stage in Stage}
    for stage in Stage:
        container = deployments[f"fecapass-{stage.value}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["fecapass", "worker", stage.value]
        assert container["image"] == "registry.example.com/fecapass:0.1.0"
        assert container["livenessProbe"]["exec"]["command"] == ["fecapass", "healthcheck", "--heartbeat"]
        assert container["ports"][0]["containerPort"] == ObservabilitySettings().metrics_port


def test_probes_use_the_health_endpoints(production: list[dict[str, Any]]) -> None:
    api = by_kind(production, "Deployment")["fecapass-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_config_and_secrets_are_separate(production: list[dict[str, Any]]) -> None:
    config = by_kind(production, "ConfigMap")["fecapass-config"]["data"]
    secret_names = (
        "FECAPASS_MAIN_DB_DSN",
        "FECAPASS_VECTOR_DB_DSN",
        "FECAPASS_REDIS_URL",  # it holds the Redis password
        "KEDA_REDIS_PASSWORD",
        "FECAPASS_S3_ACCESS_KEY",
        "FECAPASS_S3_SECRET_KEY",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
    )
    assert not set(secret_names) & set(config)
    assert not by_kind(production, "Secret")  # created by the operator, never from the repository
    for deployment in by_kind(production, "Deployment").values():
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "fecapass-config"}} in sources
        assert {"secretRef": {"name": "fecapass-secrets"}} in sources


def test_each_stage_scales_on_its_own_consumer_group(production: list[dict[str, Any]]) -> None:
    scaled = by_kind(production, "ScaledObject")
    config = by_kind(production, "ConfigMap")["fecapass-config"]["data"]
    assert set(scaled) == {f"fecapass-{stage.value}" for stage in Stage}
    for stage in Stage:
        spec = scaled[f"fecapass-{stage.value}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"fecapass-{stage.value}"
        assert spec["maxReplicaCount"] > spec["minReplicaCount"] >= 0
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"redis-streams"}
        for trigger in triggers:
            metadata = trigger["metadata"]
            assert metadata["stream"] == stage.stream
            assert metadata["consumerGroup"] == stage.group
            assert metadata["addressFromEnv"] in config
            # The same Redis as the app's: DEPLOYMENT.md's secret puts FECAPASS_REDIS_URL at that address.
            assert f"@{config[metadata['addressFromEnv']]}/0" in (ROOT / "DEPLOYMENT.md").read_text()
        kinds = {key for t in triggers for key in t["metadata"] if key in ("lagCount", "pendingEntriesCount")}
        # Lag is the backlog; pending wakes a stage scaled to zero whose entries await a claim.
        assert kinds == {"lagCount", "pendingEntriesCount"}
        for trigger in triggers:
            assert int(trigger["metadata"].get("lagCount", trigger["metadata"].get("pendingEntriesCount"))) > 0


def test_production_keeps_model_stages_warm(production: list[dict[str, Any]]) -> None:
    scaled = by_kind(production, "ScaledObject")
    assert scaled["fecapass-detect"]["spec"]["minReplicaCount"] == 1
    assert scaled["fecapass-embed"]["spec"]["minReplicaCount"] == 1
    assert scaled["fecapass-align"]["spec"]["minReplicaCount"] == 0
    assert all(doc["metadata"].get("namespace") == "fecapass" for doc in production if doc["kind"] != "Namespace")


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    }


def secrets_used(pod: dict[str, Any]) -> set[str]:
    """Secret names a pod reads, by envFrom or by single keys."""
    used = set()
    for container in pod.get("initContainers", []) + pod["containers"]:
        used |= {source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source}
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                used.add(reference["name"])
    return used


def test_only_the_s3_setup_job_gets_the_s3_root_credentials(production: list[dict[str, Any]]) -> None:
    pods = pod_specs(production)
    admin = {name for name, pod in pods.items() if "fecapass-s3-admin" in secrets_used(pod)}
    assert admin == {"Job/fecapass-s3-setup"}
    for name, pod in pods.items():
        if name == "Job/fecapass-s3-setup":
            continue
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert not [v for v in container.get("env", []) if v["name"].startswith("MINIO_ROOT")], name
    setup = pods["Job/fecapass-s3-setup"]["containers"][0]
    script = " ".join(setup["args"])
    assert 'mc admin user add setup "$FECAPASS_S3_ACCESS_KEY" "$FECAPASS_S3_SECRET_KEY"' in script
    policy = yaml.safe_load(script.split("<<EOF", 1)[1].split("EOF", 1)[0])
    bucket = "arn:aws:s3:::$FECAPASS_S3_BUCKET"
    for statement in policy["Statement"]:
        assert set(statement["Resource"]) <= {bucket, f"{bucket}/*"}, statement
        assert all("*" not in action for action in statement["Action"]), statement


def test_redis_requires_a_password(production: list[dict[str, Any]]) -> None:
    config = by_kind(production, "ConfigMap")["fecapass-config"]["data"]
    assert "FECAPASS_REDIS_URL" not in config  # in the Secret, with its password
    for scaled in by_kind(production, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["passwordFromEnv"] == "KEDA_REDIS_PASSWORD"
    deployment = (ROOT / "DEPLOYMENT.md").read_text()
    assert "--from-literal=FECAPASS_REDIS_URL='redis://:" in deployment
    assert "--from-literal=KEDA_REDIS_PASSWORD=" in deployment


def test_stage_metrics_listen_for_the_scraper(production: list[dict[str, Any]]) -> None:
    assert by_kind(production, "ConfigMap")["fecapass-config"]["data"]["FECAPASS_METRICS_HOST"] == "0.0.0.0"
