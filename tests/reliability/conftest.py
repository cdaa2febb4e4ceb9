from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import server_data_dir
from tests.reliability import report
from tests.reliability.harness import Cluster, Ledger, make_cluster
from tests.shared_data import require_basic, require_pack

# CI runs a small load; `python -m tests.reliability` the full one and writes RELIABILITY.md.
JOBS = int(os.environ.get("FECAPASS_RELIABILITY_JOBS", "24"))
PG_OUTAGE_SECONDS = float(os.environ.get("FECAPASS_PG_OUTAGE_SECONDS", "6"))
LEDGERS: list[Ledger] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_pack()
    require_basic()
    with server_data_dir() as data_dir:
        running = make_cluster(data_dir, tmp_path_factory.mktemp("reliability-logs"))
        yield running
        running.stop()
        running.services.stop()
    target = os.environ.get("FECAPASS_RELIABILITY_REPORT")
    if target:
        report.write(Path(target), LEDGERS, JOBS)


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    entry = Ledger(fault=request.node.name.removeprefix("test_"))
    LEDGERS.append(entry)
    return entry
