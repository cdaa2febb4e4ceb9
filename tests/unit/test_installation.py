"""The launcher's supervision: capped backoff, restarts logged with their attempt, no restart loop for a process
that cannot start."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import structlog

from operations.installation import Installation, InstallationError, Restarts, Supervisor
from operations.services import LocalServices, ServiceError
from schemas.streams import Stage


def test_backoff_doubles_up_to_its_cap_and_is_forgotten_after_a_stable_run() -> None:
    restarts = Restarts(first=0.5, cap=4.0, stable=60.0, started=0.0)
    delays = [restarts.died(now=1.0 + i, ran=i == 0) for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert restarts.attempt == 6
    restarts.started = 100.0
    assert restarts.died(now=100.0 + 61.0) == 0.5  # ran a minute: a new crash starts the count again
    assert restarts.attempt == 1


def test_failed_starts_keep_counting_however_long_ago_the_last_good_start_was() -> None:
    restarts = Restarts(first=1.0, cap=30.0, stable=60.0, started=0.0)
    restarts.died(now=500.0)
    assert restarts.died(now=600.0, ran=False) == 2.0


def installation_with(tmp_path: Path, name: str, args: list[str]) -> Installation:
    """An installation holding one process, ``fecapass ARGS``, already ended."""
    installation = Installation(env={}, log_dir=tmp_path, api=False, stages=())
    installation.spawn(name, args).wait(60)
    return installation


def test_an_ended_process_is_started_again_after_its_backoff_and_each_restart_is_logged(tmp_path: Path) -> None:
    installation = installation_with(tmp_path, "detect-0", ["--help"])  # exits 0 at once
    first = installation.children["detect-0"].process
    supervisor = Supervisor(installation, restarts=Restarts(first=0.2, cap=1.0))
    with structlog.testing.capture_logs() as logs:
        supervisor.check()
        assert installation.children["detect-0"].process is first  # not before its backoff
        deadline = time.monotonic() + 10
        while installation.children["detect-0"].process is first:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            supervisor.check()
    installation.children["detect-0"].process.wait(60)
    events = [(e["event"], e.get("process"), e.get("attempt"), e.get("code")) for e in logs]
    assert ("installation.process_exited", "detect-0", 1, 0) in events
    assert ("installation.restarting", "detect-0", 1, None) in events
    assert (tmp_path / "detect-0.log").read_text().count("usage: fecapass") == 2  # ran twice, one log


def test_a_process_with_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    installation = installation_with(tmp_path, "api", ["no-such-command"])  # argparse: exit 2
    with pytest.raises(InstallationError, match="api cannot start"):
        Supervisor(installation).check()


def test_a_server_that_fails_to_start_again_stays_watched_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = LocalServices(tmp_path / "data")
    services.processes["valkey"] = subprocess.Popen(["true"])
    services.processes["valkey"].wait()
    attempts: list[int] = []

    def start_valkey() -> None:  # fails once (e.g. its old processes still exit), then comes up
        attempts.append(len(attempts) + 1)
        services.processes["valkey"] = subprocess.Popen(["sleep", "60"] if len(attempts) > 1 else ["true"])
        if len(attempts) == 1:
            services.processes["valkey"].wait()
            raise ServiceError("Valkey exited with code 0 while starting")

    monkeypatch.setattr(services, "start_valkey", start_valkey)
    supervisor = Supervisor(Installation(env={}, api=False, stages=()), services, Restarts(first=0.05, cap=0.1))
    try:
        with structlog.testing.capture_logs() as logs:
            deadline = time.monotonic() + 10
            while services.processes["valkey"].poll() is not None:
                assert time.monotonic() < deadline, logs
                supervisor.check()
                time.sleep(0.02)
        events = [(e["event"], e.get("attempt")) for e in logs if e.get("process") == "valkey"]
        assert ("installation.restart_failed", 2) in events and ("installation.restarted", 2) in events
        assert attempts == [1, 2]
    finally:
        services.processes["valkey"].kill()
        services.processes["valkey"].wait()


def test_stage_workers_give_a_stage_its_own_process_count_over_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []

    def start_stage(self: Installation, stage: Stage) -> str:
        started.append(stage.value)
        return stage.value

    monkeypatch.setattr(Installation, "start_stage", start_stage)
    installation = Installation(
        env={},
        log_dir=tmp_path,
        api=False,
        stages=[Stage.DETECT, Stage.ALIGN, Stage.EMBED],
        workers_per_stage=1,
        stage_workers={Stage.DETECT: 2, Stage.EMBED: 3},
    )
    installation.start()
    assert started == ["detect", "detect", "align", "embed", "embed", "embed"]
