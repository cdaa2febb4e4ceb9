"""The embedded servers of local mode, tests and benchmarks, started where a user's folder may be."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from operations.services import LocalServices
from tests.processes import server_data_dir

pytestmark = pytest.mark.integration


def test_postgresql_starts_in_a_folder_deeper_than_a_unix_socket_path_allows() -> None:
    """`fecapass up --data-dir`, a benchmark under a deep TMPDIR: PostgreSQL's Unix socket in the data folder made its
    start fail ("exited with code 1") wherever the socket's path passed 107 bytes; it listens on TCP only."""
    with server_data_dir() as base:
        data_dir = base / ("deep-" * 12) / ("folder-" * 8)
        assert len(str(data_dir / ".s.PGSQL.65535")) > 107
        services = LocalServices(data_dir, durable=False)
        try:
            services.start_postgres()
            with psycopg.connect(services.dsn("postgres")) as conn:
                assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        finally:
            services.stop()
        assert not list(Path(data_dir).rglob(".s.PGSQL.*"))
