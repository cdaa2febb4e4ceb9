"""`fecapass up` as a user runs it: the README's curl and redis-cli steps, a clean stop, data kept on restart;
what it started comes back after a kill -9, and other local users can read none of it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from operations.services import LocalServices, ServiceError, clear_stale_postmaster_pid, free_port
from schemas.streams import Stage
from tests.processes import server_data_dir, wait_until_answers
from tests.shared_data import BASIC, require_basic

pytestmark = pytest.mark.e2e


UP_LOGS: list[Path] = []  # the latest, for failure messages


def start_up(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen[bytes]:
    UP_LOGS.append(log)
    # No model settings: the default pack must work from the Python install alone, with no download.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FECAPASS_MODEL")}
    env["FECAPASS_MODEL_ROOT"] = str(data_dir / "no-models-here")
    env["FECAPASS_MAX_WAIT_SECONDS"] = "120"  # the first job waits for the stage processes to load the pack
    args = [sys.executable, "-m", "operations.cli", "up", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    return subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the API answers ready and the banner (printed once it does) is out."""
    wait_until_answers(f"{base_url}/health/ready", process=process, describe=lambda: log.read_text()[-3000:])
    deadline = time.monotonic() + 30
    while "Press Ctrl-C to stop." not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def printed_redis_password(banner: str) -> str:
    """The password of the banner's `export REDISCLI_AUTH=...` line, as a user would copy it."""
    [line] = [line for line in banner.splitlines() if "export REDISCLI_AUTH=" in line]
    return line.split("=", 1)[1].strip()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with server_data_dir() as folder:
        yield folder


def test_up_stops_with_a_clear_message_when_the_pack_is_missing(tmp_path: Path, data_dir: Path) -> None:
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port(), "s3": free_port()}
    env = {**os.environ, "FECAPASS_MODEL_PACK": "no_such_pack", "FECAPASS_MODEL_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "operations.cli", "up", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "model pack 'no_such_pack' not found" in result.stdout + result.stderr
    assert "Stopped." in result.stdout


def child(up: subprocess.Popen[bytes], matches: Callable[[psutil.Process], bool]) -> psutil.Process:
    """The one live direct child of `fecapass up` that ``matches``, waiting (bounded) for it to be there."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = []
        for process in psutil.Process(up.pid).children():
            try:
                if process.status() != psutil.STATUS_ZOMBIE and matches(process):
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
        if len(found) == 1:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no single child of fecapass up matched:\n{UP_LOGS[-1].read_text()[-4000:]}")


def named(name: str) -> Callable[[psutil.Process], bool]:
    return lambda process: process.name() == name


def stage_worker(stage: Stage) -> Callable[[psutil.Process], bool]:
    return lambda process: process.cmdline()[-2:] == ["worker", stage.value]


def killed_and_replaced(up: subprocess.Popen[bytes], matches: Callable[[psutil.Process], bool]) -> psutil.Process:
    victim = child(up, matches)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    replacement = child(up, lambda process: process.pid != victim.pid and matches(process))
    assert replacement.pid != victim.pid
    return replacement


def ready_status(base_url: str) -> int:
    try:
        return httpx.get(f"{base_url}/health/ready", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def wait_ready_again(base_url: str) -> None:
    deadline = time.monotonic() + 120
    while ready_status(base_url) != 200:
        assert time.monotonic() < deadline, f"{base_url}/health/ready did not answer 200 again"
        time.sleep(0.3)


def private(path: Path) -> bool:
    """Nobody but the owner (as root, PostgreSQL's group `nobody` may pass through the data folder) gets in."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode & 0o007 == 0 and (mode & 0o070 == 0 or (os.geteuid() == 0 and path.is_dir() and mode & 0o060 == 0))


def test_up_serves_restarts_what_dies_stops_cleanly_and_keeps_data_on_restart(tmp_path: Path, data_dir: Path) -> None:
    """One `fecapass up` (each start is an initdb and every stage loading its pack, ~15 s on two cores) for what a
    user does with it: the README's steps, its secrets and files, kill -9 of what it started, a clean stop; then a
    second start on the same folder."""
    require_basic()
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port(), "s3": free_port()}
    ports["metrics"] = free_port()
    base_url = f"http://127.0.0.1:{ports['api']}"
    log = tmp_path / "up.log"
    process = start_up(data_dir, ports, log)
    try:
        wait_ready(base_url, process, log)
        key = (data_dir / "api-key").read_text().strip()
        user_id = enroll_search_and_inspect(base_url, key, ports["redis"], log.read_text())
        metrics_on_loopback_and_secrets_hidden(process, ports, data_dir, log.read_text())
        with httpx.Client(base_url=base_url, timeout=130, headers={"X-API-Key": key}) as client:
            files_private(data_dir)
            what_dies_comes_back(process, base_url, client, user_id)
        restarts = [line for line in log.read_text().splitlines() if "installation.restarting" in line]
        for name in ("valkey", "postgres", "detect-0"):
            assert [line for line in restarts if name in line and "attempt" in line], name
    finally:
        code = stop(process)
    assert code == 0, log.read_text()[-3000:]
    assert "Stopped." in log.read_text()

    # Data survives a restart: the same person is still found.
    process = start_up(data_dir, ports, log)
    try:
        wait_ready(base_url, process, log)
        with (
            httpx.Client(base_url=base_url, timeout=130, headers={"X-API-Key": key}) as client,
            (BASIC / "obama_3.jpg").open("rb") as photo,
        ):
            found = client.post("/v1/search", files={"file": photo}, params={"wait": 120}).json()
        assert found["result"]["faces"][0]["matches"][0]["user_id"] == user_id
    finally:
        assert stop(process) == 0


def enroll_search_and_inspect(base_url: str, key: str, redis_port: int, banner: str) -> int:
    """The README's steps: the banner's facts, an enroll and a search over curl's routes, the streams in
    redis-cli with the printed password. Returns the enrolled user's id."""
    assert base_url in banner and f"XINFO GROUPS {Stage.DETECT.stream}" in banner
    assert "Model pack     dlib: 128-d, licence CC0" in banner
    assert key in banner
    with httpx.Client(base_url=base_url, timeout=130, headers={"X-API-Key": key}) as client:
        user = client.post("/v1/users", json={"email": "barack@example.com", "full_name": "Barack Obama"}).json()
        with (BASIC / "obama_1.jpg").open("rb") as photo:
            enrolled = client.post(f"/v1/users/{user['id']}/faces", files={"file": photo}, params={"wait": 120})
        assert enrolled.status_code == 200 and enrolled.json()["state"] == "done", enrolled.text
        with (BASIC / "obama_2.jpg").open("rb") as photo:
            found = client.post("/v1/search", files={"file": photo}, params={"wait": 120}).json()
        assert found["result"]["faces"][0]["matches"][0]["user_id"] == user["id"]
        assert found["model_pack"] == found["result"]["model_pack"] == "dlib"
        ready = client.get("/health/ready").json()
        assert ready["model_pack"]["name"] == "dlib" and ready["model_pack"]["commercial_use"] is True
    streams = redis.Redis(port=redis_port, password=printed_redis_password(banner), decode_responses=True)
    for stage in Stage:
        groups = streams.xinfo_groups(stage.stream)
        assert [g["name"] for g in groups] == [stage.group]
        assert groups[0]["pending"] == 0 and groups[0]["consumers"] >= 1
    entry = streams.xrange(Stage.ALIGN.stream, count=1)[0][1]
    assert entry["kind"] == "enroll" and entry["faces"].startswith("[{")  # readable fields
    return int(user["id"])


def metrics_on_loopback_and_secrets_hidden(
    up: subprocess.Popen[bytes], ports: dict[str, int], data_dir: Path, banner: str
) -> None:
    # --metrics-port: the first stage process (detect) serves its metrics there, on loopback only.
    detect = child(up, stage_worker(Stage.DETECT))
    deadline = time.monotonic() + 60
    while not [c for c in detect.net_connections("tcp") if c.status == psutil.CONN_LISTEN]:
        assert time.monotonic() < deadline, "detect never listened for metrics"
        time.sleep(0.2)
    listening = [c.laddr for c in detect.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", ports["metrics"])]
    assert "fecapass_stage" in httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text

    # Valkey needs the password; the S3 key pair is not on rclone's command line for all to read.
    password = printed_redis_password(banner)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=ports["redis"]).ping()
    assert redis.Redis(port=ports["redis"], password=password).ping()
    rclone = child(up, named("rclone"))
    secret = (data_dir / "credentials.json").read_text().split('"s3_secret_key": "')[1].split('"')[0]
    assert secret not in " ".join(rclone.cmdline()) and password not in " ".join(rclone.cmdline())
    assert password not in " ".join(child(up, named("valkey-server")).cmdline())


def files_private(data_dir: Path) -> None:
    """Photos, crops, the AOF, secrets, logs: the owner's only (once an enroll has written some of each)."""
    written = [p for p in data_dir.rglob("*") if not p.is_symlink() and not p.is_socket()]
    assert any(p.is_file() for p in (data_dir / "s3").rglob("*"))
    assert any(p.is_file() for p in (data_dir / "valkey").rglob("*"))
    assert private(data_dir)
    leaking = [str(p) for p in written if p != data_dir and not private(p)]
    assert not leaking


def what_dies_comes_back(up: subprocess.Popen[bytes], base_url: str, client: httpx.Client, user_id: int) -> None:
    """kill -9: Valkey, PostgreSQL's postmaster and a stage process each come back, and the installation answers
    again: the enrolled person is still found."""
    killed_and_replaced(up, named("valkey-server"))
    wait_ready_again(base_url)
    killed_and_replaced(up, named("postgres"))
    wait_ready_again(base_url)
    killed_and_replaced(up, stage_worker(Stage.DETECT))
    with (BASIC / "obama_2.jpg").open("rb") as photo:
        found = client.post("/v1/search", files={"file": photo}, params={"wait": 120}).json()
    assert found["result"]["faces"][0]["matches"][0]["user_id"] == user_id, found


def test_a_postmaster_pid_is_cleared_only_when_no_postgres_of_its_folder_runs(
    services: LocalServices, tmp_path: Path
) -> None:
    live = services.data_dir / "postgres"
    lock = live / "postmaster.pid"
    postmaster = int(lock.read_text().split()[0])
    with pytest.raises(ServiceError, match="still run"):
        clear_stale_postmaster_pid(live)
    assert lock.exists()
    # A PID now held by another process (here: a live postgres of another folder) or by nobody is stale.
    other = tmp_path / "pgdata"
    other.mkdir()
    for pid in (postmaster, 2**22 + 1):
        (other / "postmaster.pid").write_text(f"{pid}\n{other}\n")
        assert clear_stale_postmaster_pid(other)
        assert not (other / "postmaster.pid").exists()
    assert not clear_stale_postmaster_pid(other)  # nothing to clear
