"""``fecapass up``: the embedded servers, migrations, the API and N processes per stage, all supervised."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from common import clients
from common import settings as s
from common.db.main_repository import MainRepository
from common.db.vector_repository import VectorRepository
from common.packs import PackInfo
from common.packs.library import PackLibrary
from operations.installation import Installation, InstallationError, Supervisor, start_servers
from operations.services import (
    MAIN_DB,
    PRIVATE_UMASK,
    VECTOR_DB,
    LocalServices,
    interrupt_on_sigterm,
    valkey_cli,
)
from schemas.streams import Stage


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


# The CLI reports it as a configuration error (exit 2).
LocalModeError = InstallationError


def run_up(options: UpOptions) -> None:
    os.umask(PRIVATE_UMASK)  # the API key file and whatever else this process writes: the owner's alone
    services = LocalServices(
        options.data_dir,
        postgres_port=options.postgres_port,
        valkey_port=options.redis_port,
        s3_port=options.s3_port,
    )
    interrupt_on_sigterm()
    installation: Installation | None = None
    try:
        start_servers(services)
        # Load the pack here first: a missing one is one clear error, not a crash loop of every stage process.
        packs = PackLibrary(s.load(s.ModelSettings))
        pack = packs.describe(active_pack(services, packs.default_name))
        api_key = first_api_key(options.data_dir, services.dsn(MAIN_DB))
        installation = Installation(
            env={
                **services.environment(),
                "FECAPASS_LOG_JSON": os.environ.get("FECAPASS_LOG_JSON", "false"),
                "FECAPASS_MODEL_PACK": pack.name,
            },
            api_port=options.api_port,
            workers_per_stage=options.workers_per_stage,
            metrics_port=options.metrics_port,
            metrics_host="127.0.0.1",  # this machine only: other local users have no business there
        )
        installation.start(ready_timeout=120)
        _print_banner(options, services, pack, installation, api_key)
        Supervisor(installation, services).run()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nStopping Fecapass ...", flush=True)
        if installation is not None:
            installation.stop()
        services.stop()
        print("Stopped. Data kept in", options.data_dir, flush=True)


def first_api_key(data_dir: Path, main_dsn: str) -> str:
    """A write key for the local user, made on the first start and kept (0600) in the data folder."""
    path = data_dir / "api-key"
    if path.exists():
        return path.read_text().strip()
    key = MainRepository.at(main_dsn).create_api_key("local mode", "write").key
    path.write_text(key)  # 0600: the umask of run_up
    return key


def _print_banner(
    options: UpOptions, services: LocalServices, pack: PackInfo, installation: Installation, api_key: str
) -> None:
    cli = valkey_cli()
    metrics = ", ".join(f"{name} 127.0.0.1:{port}" for name, port in installation.metrics_ports.items()) or "off"
    print(
        f"""
Fecapass is up (data in {options.data_dir}).
  Model pack     {pack.name}: {pack.dim}-d, licence {pack.licence} (fecapass models list)
  API            http://127.0.0.1:{options.api_port}   (OpenAPI docs at /docs, metrics at /metrics)
  Console        http://127.0.0.1:{options.api_port}/ui/   (sign in with the API key)
  API key        {api_key}   (write scope; kept in {options.data_dir / "api-key"})
                 export FECAPASS_KEY={api_key}
  Stage metrics  {metrics}
  PostgreSQL     {MAIN_DB} and {VECTOR_DB} on 127.0.0.1:{services.postgres_port}
  Valkey/Redis   redis://127.0.0.1:{services.valkey_port}/0   (password in {options.data_dir / "credentials.json"})
  S3             http://{services.s3_endpoint}  bucket {services.bucket}
Inspect the streams:
  export REDISCLI_AUTH={services.credentials.valkey_password}
  {cli} -p {services.valkey_port} XINFO GROUPS {Stage.DETECT.stream}
  (redis-cli -p {services.valkey_port} works the same)
Press Ctrl-C to stop.
""",
        flush=True,
    )
