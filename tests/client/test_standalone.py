"""The client is a distribution of its own: it installs with httpx (and sniffio) alone and imports nothing of the
server."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import fecapass_client

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
# The server's packages and every third-party package the server needs that httpx does not.
SERVER_ONLY = [
    "schemas", "common", "ingest_api", "detector", "embedder", "indexer", "webhook_sender", "operations",
    "fastapi", "starlette", "pydantic", "pydantic_core", "pydantic_settings", "email_validator", "uvicorn",
    "multipart", "python_multipart", "redis", "hiredis", "psycopg", "psycopg_pool", "pgvector", "minio", "urllib3",
    "numpy", "cv2", "PIL", "onnxruntime", "insightface", "faiss", "dlib", "structlog", "prometheus_client",
    "rich", "cachetools", "tenacity", "psutil",
]  # fmt: skip

# Runs in a fresh interpreter (-I: no PYTHONPATH, no current folder) where importing any of them fails.
PROBE = """
import sys
SERVER_ONLY = set(sys.argv[1].split(","))

class ServerHidden:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in SERVER_ONLY:
            raise ImportError(f"{name} is a server package")
        return None

sys.meta_path.insert(0, ServerHidden())
import fecapass_client
from fecapass_client import AsyncFecapass, Fecapass
from fecapass_client.models import parse_job

Fecapass("http://127.0.0.1:9", "key").close()
job = parse_job({"job_id": "j", "kind": "enroll", "state": "done", "status_url": "u", "image_key": "k",
                 "result": {"user_id": 1, "face_id": 2, "faces_seen": 1, "face": {"box": [0, 0, 1, 1], "score": 1},
                            "model_pack": "dlib"}})
assert job.result.face_id == 2
print(fecapass_client.__file__)
print(",".join(sorted(name for name in sys.modules if name.partition(".")[0] in SERVER_ONLY)))
"""


def test_it_imports_and_works_with_the_server_packages_hidden(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, ",".join(SERVER_ONLY)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    location, loaded = done.stdout.splitlines()
    assert Path(location).is_relative_to(CLIENT) and loaded == ""


def test_the_probe_does_hide_them(tmp_path: Path) -> None:
    """The probe above is only worth something if an import of a server package does fail in it."""
    probe = PROBE.replace("import fecapass_client\n", "import fecapass_client\nimport pydantic\n", 1)
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, ",".join(SERVER_ONLY)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0 and "pydantic is a server package" in done.stderr


def test_its_distribution_needs_httpx_and_sniffio_only_and_ships_its_types() -> None:
    with (CLIENT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert project["name"] == "fecapass-client" and project["requires-python"] == ">=3.10"
    # sniffio: httpcore imports it on every lock of an async pool, a failed import each time where it is absent.
    assert [requirement.split(">")[0] for requirement in project["dependencies"]] == ["httpx", "sniffio"]
    assert (Path(fecapass_client.__file__).parent / "py.typed").is_file()


def test_it_type_checks_for_python_3_10() -> None:
    """Its oldest supported Python: a stdlib name that 3.10 lacks (datetime.UTC, typing.Self, enum.StrEnum) fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-version", "3.10", "-p", "fecapass_client"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
