"""``fecapass up``: the embedded servers, migrations, the API and one process per stage, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import SecretStr

from common import clients
from common import settings as s
from common.db.main_repository import MainRepository
from common.db.migrate import migrate_all
from common.db.vector_repository import VectorRepository
from common.packs import PackInfo
from common.packs.library import PackLibrary
from operations.services import MAIN_DB, VECTOR_DB, LocalServices, interrupt_on_sigterm, valkey_cli
from schemas.streams import Stage

log = structlog.get_logger(__name__)


@dataclass
class UpOptions:
    data_dir: Path
    api_port: int = 8000
    postgres_port: int = 5433
    redis_port: int = 6380
    s3_port: int = 9000
    workers_per_stage: int = 1
    metrics_port: int = 9101  # first worker's; the others count up from it. 0: off


def active_pack(services: LocalServices, configured: str) -> str:
    """The pack searches use: the active one in the database, else the configured one (a fresh install)."""
    database = s.DatabaseSettings(
        main_db_dsn=SecretStr(services.dsn(MAIN_DB)), vector_db_dsn=SecretStr(services.dsn(VECTOR_DB))
    )
    with clients.vector_db_pool(database) as pool:
        return VectorRepository(pool).active_pack() or configured


# `fecapass` exits with 2 on a settings or model-pack error.
CONFIGURATION_ERROR = 2


class LocalModeError(RuntimeError):
    pass


class Supervisor:
    """Starts child processes and restarts one that dies, until asked to stop."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, tuple[list[str], dict[str, str], subprocess.Popen[bytes]]] = {}
        self.stopping = False

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "operations.cli", *args]
        env = {**self.env, **(extra_env or {})}
        self.children[name] = (command, env, subprocess.Popen(command, env=env))

    def watch(self) -> None:
        while not self.stopping:
            for name, (command, env, process) in list(self.children.items()):
                if process.poll() is None or self.stopping:
                    continue
                if process.returncode == CONFIGURATION_ERROR:  # restarting cannot help
                    raise LocalModeError(f"{name} cannot start (see its message above)")
                log.warning("local.process_restarting", process=name, code=process.returncode)
                time.sleep(1)
                self.children[name] = (command, env, subprocess.Popen(command, env=env))
            time.sleep(0.5)

    def stop(self, timeout: float = 40) -> None:
        self.stopping = True
        for _, _, process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, _, process in self.children.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_up(options: UpOptions) -> None:
    services = LocalServices(
        options.data_dir,
        postgres_port=options.postgres_port,
        valkey_port=options.redis_port,
        s3_port=options.s3_port,
    )
    interrupt_on_sigterm()
    supervisor: Supervisor | None = None
    try:
        services.start()
        migrate_all(services.dsn(MAIN_DB), services.dsn(VECTOR_DB))
        # Load the pack here first: a missing one is one clear error, not a crash loop of every stage process.
        packs = PackLibrary(s.load(s.ModelSettings))
        pack = packs.describe(active_pack(services, packs.default_name))
        api_key = first_api_key(options.data_dir, services.dsn(MAIN_DB))
        env = {
            **os.environ,
            **services.environment(),
            "FECAPASS_LOG_JSON": os.environ.get("FECAPASS_LOG_JSON", "false"),
            "FECAPASS_API_PORT": str(options.api_port),
            "FECAPASS_MODEL_PACK": pack.name,
        }
        supervisor = Supervisor(env)
        supervisor.spawn("api", ["api"])
        metrics_ports: list[str] = []
        for stage in Stage:
            for index in range(options.workers_per_stage):
                port = options.metrics_port + len(metrics_ports) if options.metrics_port else 0
                metrics_ports.append(f"{stage.value}-{index}:{port}")
                supervisor.spawn(
                    f"{stage.value}-{index}", ["worker", stage.value], {"FECAPASS_METRICS_PORT": str(port)}
                )
        _print_banner(options, services, pack, metrics_ports, api_key)
        supervisor.watch()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nStopping Fecapass ...", flush=True)
        if supervisor is not None:
            supervisor.stop()
        services.stop()
        print("Stopped. Data kept in", options.data_dir, flush=True)


def first_api_key(data_dir: Path, main_dsn: str) -> str:
    """A write key for the local user, made on the first start and kept (0600) in the data folder."""
    path = data_dir / "api-key"
    if path.exists():
        return path.read_text().strip()
    key = MainRepository.at(main_dsn).create_api_key("local mode", "write").key
    path.write_text(key)
    path.chmod(0o600)
    return key


def _print_banner(
    options: UpOptions, services: LocalServices, pack: PackInfo, metrics: list[str], api_key: str
) -> None:
    cli = valkey_cli()
    print(
        f"""
Fecapass is up (data in {options.data_dir}).
  Model pack     {pack.name}: {pack.dim}-d, licence {pack.licence} (fecapass models list)
  API            http://127.0.0.1:{options.api_port}   (OpenAPI docs at /docs, metrics at /metrics)
  API key        {api_key}   (write scope; kept in {options.data_dir / "api-key"})
                 export FECAPASS_KEY={api_key}
  Stage metrics  {", ".join(metrics)}
  PostgreSQL     {MAIN_DB} and {VECTOR_DB} on 127.0.0.1:{services.postgres_port}
  Valkey/Redis   {services.redis_url}
  S3             http://{services.s3_endpoint}  bucket {services.bucket}
Inspect the streams:
  {cli} -p {services.valkey_port} XINFO GROUPS {Stage.DETECT.stream}
  (redis-cli -p {services.valkey_port} works the same)
Press Ctrl-C to stop.
""",
        flush=True,
    )
