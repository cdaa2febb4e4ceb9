"""The whole product as processes: `fecapass api` and two `fecapass worker` processes per stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from common.services import LocalServices, free_port
from schemas.streams import Stage
from tests.shared_data import MODEL_ROOT, PACK, require_basic, require_pack

WORKERS_PER_STAGE = 2


@dataclass
class RunningPipeline:
    base_url: str
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=90)

    def handled_by(self, stage: Stage) -> dict[str, int]:
        """Entries each process of a stage finished, read from its structured log."""
        counts = {}
        for name in self.processes:
            if name.startswith(stage.value):
                lines = (self.log_dir / f"{name}.log").read_text().splitlines()
                events = [json.loads(line) for line in lines if line.startswith("{")]
                counts[name] = sum(1 for e in events if e.get("event") in ("stage.handled", "stage.job_failed"))
        return counts


def start_process(env: dict[str, str], log_dir: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "common.cli", *args], env=env, stdout=log, stderr=log)


@pytest.fixture(scope="session")
def pipeline(
    services: LocalServices, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPipeline]:
    require_pack()
    require_basic()
    log_dir = tmp_path_factory.mktemp("pipeline-logs")
    port = free_port()
    env = {
        **os.environ,
        **service_env,
        "FECAPASS_MODEL_PACK": PACK,
        "FECAPASS_MODEL_ROOT": str(MODEL_ROOT),
        "FECAPASS_API_PORT": str(port),
        "FECAPASS_LOG_JSON": "true",
        "FECAPASS_MAX_WAIT_SECONDS": "90",
        "FECAPASS_READ_COUNT": "4",
        "FECAPASS_ORT_THREADS": "1",
    }
    running = RunningPipeline(f"http://127.0.0.1:{port}", env, log_dir)
    running.processes["api"] = start_process(env, log_dir, "api", ["api"])
    for stage in Stage:
        for index in range(WORKERS_PER_STAGE):
            running.processes[f"{stage.value}-{index}"] = start_process(
                env, log_dir, f"{stage.value}-{index}", ["worker", stage.value]
            )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{running.base_url}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("API did not become ready: " + (log_dir / "api.log").read_text()[-2000:])
        time.sleep(0.2)
    yield running
    for process in running.processes.values():
        process.send_signal(signal.SIGTERM)
    for name, process in running.processes.items():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{name} did not stop within 30 s of SIGTERM")
