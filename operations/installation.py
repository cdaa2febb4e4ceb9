"""A running installation: the API and N processes per stage (the webhook sender is one) as child processes held
by PID, each with its environment, log file and ports; started until ready, stopped with SIGTERM, and, where asked,
supervised: what dies is restarted with a capped backoff. Local mode, the benchmark and the tests all start one."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

from common.db.migrate import migrate_all
from operations.services import MAIN_DB, VECTOR_DB, LocalServices, free_port
from schemas.streams import Stage

log = structlog.get_logger(__name__)

# `fecapass` exits with 2 on a settings or model-pack error: starting it again cannot help.
CONFIGURATION_ERROR = 2


class InstallationError(RuntimeError):
    pass


def start_servers(services: LocalServices) -> LocalServices:
    """The three servers started and both databases migrated; stopped again if that fails half way."""
    try:
        services.start()
        migrate_all(services.dsn(MAIN_DB), services.dsn(VECTOR_DB))
    except BaseException:
        services.stop()
        raise
    return services


def wait_until_answers(
    url: str,
    *,
    timeout: float = 90,
    process: subprocess.Popen[bytes] | None = None,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Until ``url`` answers 200; fails at once if ``process`` exits, with ``describe()`` (its log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise InstallationError(f"process exited with {process.returncode} before {url} answered:\n{describe()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise InstallationError(f"{url} did not answer within {timeout:.0f} s:\n{describe()}")


@dataclass
class Child:
    """One process of the installation, and what it takes to start it again."""

    args: list[str]  # of `fecapass`
    env: dict[str, str]
    process: subprocess.Popen[bytes]


@dataclass(kw_only=True)
class Installation:
    """``env`` holds the settings (FECAPASS_*) on top of this process's environment. Ports of 0 mean a free one."""

    env: dict[str, str]
    log_dir: Path | None = None  # <name>.log per process; None: they write to this process's stdout
    api: bool = True
    api_port: int = 0
    stages: Sequence[Stage] = tuple(Stage)
    workers_per_stage: int = 1
    stage_workers: Mapping[Stage, int] = field(default_factory=dict)  # per stage, over workers_per_stage
    metrics_port: int | None = 0  # first stage process's, the others count up from it; 0: off; None: any free
    metrics_host: str = "127.0.0.1"
    children: dict[str, Child] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # stage process -> its metrics port

    def __post_init__(self) -> None:
        self.api_port = self.api_port or free_port()
        self.env = {**os.environ, **self.env, "FECAPASS_API_PORT": str(self.api_port)}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: child.process for name, child in self.children.items()}

    # -- starting ------------------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 90) -> None:
        """The API and every stage's processes, until /health/ready answers 200 (without an API: started)."""
        try:
            if self.api:
                self.spawn("api", ["api"])
            for stage in self.stages:
                for _ in range(self.stage_workers.get(stage, self.workers_per_stage)):
                    self.start_stage(stage)
            if self.api:
                self.wait_ready(ready_timeout)
        except BaseException:  # interrupted or failed half way: stop what was started
            self.stop()
            raise

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``fecapass ARGS`` as ``name`` (replacing a process of that name)."""
        env = {**self.env, **(extra_env or {})}
        self.children[name] = Child(args, env, self._popen(name, args, env))
        return self.children[name].process

    def start_stage(self, stage: Stage) -> str:
        """One more process of ``stage``, named ``<stage>-<n>``, with its metrics port."""
        number = sum(1 for name in self.children if name.startswith(f"{stage.value}-"))
        name = f"{stage.value}-{number}"
        if self.metrics_port is None:
            port = free_port()
        elif self.metrics_port:
            port = self.metrics_port + len(self.metrics_ports)
        else:
            port = 0
        if port:
            self.metrics_ports[name] = port
        self.spawn(
            name,
            ["worker", stage.value],
            {"FECAPASS_METRICS_PORT": str(port), "FECAPASS_METRICS_HOST": self.metrics_host},
        )
        return name

    def respawn(self, name: str) -> None:
        """Start an ended process again as it was started."""
        child = self.children[name]
        child.process = self._popen(name, child.args, child.env)

    def _popen(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "operations.cli", *args]
        if self.log_dir is None:
            return subprocess.Popen(command, env=env)
        with (self.log_dir / f"{name}.log").open("ab") as log_file:
            return subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)

    def stage_processes(self, stage: Stage) -> list[str]:
        """Names of the stage's processes still running."""
        return [
            name
            for name, child in self.children.items()
            if name.startswith(f"{stage.value}-") and child.process.poll() is None
        ]

    def log_tail(self, name: str, size: int = 3000) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def wait_ready(self, timeout: float = 90) -> None:
        wait_until_answers(
            f"{self.base_url}/health/ready",
            timeout=timeout,
            process=self.children["api"].process,
            describe=lambda: self.log_tail("api"),
        )

    # -- stopping ------------------------------------------------------------------------------------------

    def stop(self, timeout: float = 40) -> list[str]:
        """SIGTERM to every process, then SIGKILL to those still running after ``timeout``; returns their names."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = []
        for name, child in self.children.items():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
                killed.append(name)
        return killed


@dataclass
class Restarts:
    """Backoff of one supervised process: doubling from ``first`` up to ``cap`` seconds, forgotten once it has
    run ``stable`` seconds."""

    first: float = 0.5
    cap: float = 30.0
    stable: float = 60.0
    attempt: int = 0
    due: float | None = None  # when the next start is due, while it is down
    started: float = field(default_factory=time.monotonic)

    def died(self, now: float, ran: bool = True) -> float:
        """Counts a death (``ran``) or a failed start; returns the wait before the next start."""
        if ran and now - self.started >= self.stable:
            self.attempt = 0
        self.attempt += 1
        delay = min(self.cap, self.first * 2.0 ** (self.attempt - 1))
        self.due = now + delay
        return delay


class Supervisor:
    """Restarts what ended of an installation and of its servers, with a capped backoff, logging each restart."""

    def __init__(
        self, installation: Installation, services: LocalServices | None = None, restarts: Restarts | None = None
    ) -> None:
        self.installation = installation
        self.services = services
        self.template = restarts or Restarts()
        self.restarts: dict[str, Restarts] = {}

    def run(self, stop: threading.Event | None = None, every: float = 0.2) -> None:
        """Checks until ``stop`` is set (or forever); raises InstallationError for a process that cannot start."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.check()
            stop.wait(every)

    def check(self) -> None:
        now = time.monotonic()
        members: dict[str, tuple[subprocess.Popen[bytes], Callable[[], None]]] = {}
        if self.services is not None:
            for name, process in self.services.processes.items():
                members[name] = (process, functools.partial(self.services.restart, name))
        for name, child in self.installation.children.items():
            members[name] = (child.process, functools.partial(self.installation.respawn, name))
        for name, (process, restart) in members.items():
            self._check_one(name, process, restart, now)

    def _check_one(self, name: str, process: subprocess.Popen[bytes], restart: Callable[[], None], now: float) -> None:
        state = self.restarts.setdefault(name, Restarts(self.template.first, self.template.cap, self.template.stable))
        if state.due is None:
            code = process.poll()  # reaps it: a zombie's PID would stay taken (PostgreSQL's lock names it)
            if code is None:
                return
            if code == CONFIGURATION_ERROR and name in self.installation.children:
                raise InstallationError(f"{name} cannot start (see its message above)")
            delay = state.died(now)
            log.warning("installation.process_exited", process=name, code=code, attempt=state.attempt, delay=delay)
        if state.due is None or now < state.due:
            return
        log.warning("installation.restarting", process=name, attempt=state.attempt)
        try:
            restart()
        except Exception as exc:  # a server that cannot start yet (its old processes still exit): try again later
            delay = state.died(time.monotonic(), ran=False)
            log.warning("installation.restart_failed", process=name, error=str(exc), attempt=state.attempt, delay=delay)
            return
        state.due, state.started = None, time.monotonic()
        log.info("installation.restarted", process=name, attempt=state.attempt)
