"""`fecapass up` as a user runs it: the README's curl and redis-cli steps, a clean stop, data kept on restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from operations.services import free_port
from schemas.streams import Stage
from tests.processes import wait_until_answers
from tests.shared_data import BASIC, require_basic

pytestmark = pytest.mark.e2e


def start_up(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    # No model settings: the default pack must work from the Python install alone, with no download.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FECAPASS_MODEL")}
    env["FECAPASS_MODEL_ROOT"] = str(data_dir / "no-models-here")
    env["FECAPASS_MAX_WAIT_SECONDS"] = "120"  # the first job waits for the stage processes to load the pack
    args = [sys.executable, "-m", "operations.cli", "up", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    return subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    wait_until_answers(f"{base_url}/health/ready", process=process, describe=lambda: log.read_text()[-3000:])


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_up_enroll_search_inspect_stop_and_restart(tmp_path: Path) -> None:
    require_basic()
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port(), "s3": free_port()}
    base_url = f"http://127.0.0.1:{ports['api']}"
    data_dir, log = tmp_path / "data", tmp_path / "up.log"
    process = start_up(data_dir, ports, log)
    try:
        wait_ready(base_url, process, log)
        banner = log.read_text()
        assert base_url in banner and f"XINFO GROUPS {Stage.DETECT.stream}" in banner
        assert "Model pack     dlib: 128-d, licence CC0" in banner
        key = (data_dir / "api-key").read_text().strip()
        assert key in banner
        with httpx.Client(base_url=base_url, timeout=130, headers={"X-API-Key": key}) as client:
            user = client.post("/v1/users", json={"email": "barack@example.com", "full_name": "Barack Obama"}).json()
            with (BASIC / "obama_1.jpg").open("rb") as photo:
                enrolled = client.post(f"/v1/users/{user['id']}/faces", files={"file": photo}, params={"wait": 120})
            assert enrolled.status_code == 200 and enrolled.json()["state"] == "done"
            with (BASIC / "obama_2.jpg").open("rb") as photo:
                found = client.post("/v1/search", files={"file": photo}, params={"wait": 120}).json()
            assert found["result"]["faces"][0]["matches"][0]["user_id"] == user["id"]
            assert found["model_pack"] == found["result"]["model_pack"] == "dlib"
            ready = client.get("/health/ready").json()
            assert ready["model_pack"]["name"] == "dlib" and ready["model_pack"]["commercial_use"] is True
        streams = redis.Redis(port=ports["redis"], decode_responses=True)
        for stage in Stage:
            groups = streams.xinfo_groups(stage.stream)
            assert [g["name"] for g in groups] == [stage.group]
            assert groups[0]["pending"] == 0 and groups[0]["consumers"] >= 1
        entry = streams.xrange(Stage.ALIGN.stream, count=1)[0][1]
        assert entry["kind"] == "enroll" and entry["faces"].startswith("[{")  # readable fields
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-3000:]
    assert "Stopped." in log.read_text()

    # Data survives a restart: the same person is still found.
    process = start_up(data_dir, ports, log)
    try:
        wait_ready(base_url, process, log)
        headers = {"X-API-Key": key}
        with (
            httpx.Client(base_url=base_url, timeout=130, headers=headers) as client,
            (BASIC / "obama_3.jpg").open("rb") as photo,
        ):
            found = client.post("/v1/search", files={"file": photo}, params={"wait": 120}).json()
        assert found["result"]["faces"][0]["matches"][0]["user_id"] == user["id"]
    finally:
        assert stop(process) == 0


def test_up_stops_with_a_clear_message_when_the_pack_is_missing(tmp_path: Path) -> None:
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port(), "s3": free_port()}
    env = {**os.environ, "FECAPASS_MODEL_PACK": "no_such_pack", "FECAPASS_MODEL_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "operations.cli", "up", "--data-dir", str(tmp_path / "data")]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "model pack 'no_such_pack' not found" in result.stdout + result.stderr
    assert "Stopped." in result.stdout
