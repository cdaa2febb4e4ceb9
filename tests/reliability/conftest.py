from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import server_data_dir
from tests.reliability import report
from tests.reliability.harness import CLUSTER_ENV, Cluster, Ledger, make_cluster
from tests.shared_data import require_basic, require_pack

# CI runs a small load; `python -m tests.reliability` the full one and writes RELIABILITY.md.
JOBS = int(os.environ.get("FECAPASS_RELIABILITY_JOBS", "12"))
PG_OUTAGE_SECONDS = float(os.environ.get("FECAPASS_PG_OUTAGE_SECONDS", "6"))
# The random faults draw from this seed; the report names it, FECAPASS_RELIABILITY_SEED replays a run.
SEED = int(os.environ.get("FECAPASS_RELIABILITY_SEED") or random.SystemRandom().randrange(1, 1_000_000))
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
    write_report()


def write_report() -> None:
    """RELIABILITY.md, when asked for; written after every scenario, so that a run cut short still reports."""
    target = os.environ.get("FECAPASS_RELIABILITY_REPORT")
    if target:
        shown = ("FECAPASS_CLAIM_IDLE_MS", "FECAPASS_MAX_DELIVERIES", "FECAPASS_READ_COUNT")
        settings = {name: CLUSTER_ENV[name] for name in shown}
        settings["seed"] = str(SEED)
        report.write(Path(target), LEDGERS, JOBS, settings)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" or (report.when == "setup" and report.skipped):
        item.stash[OUTCOME] = report


OUTCOME = pytest.StashKey[pytest.TestReport]()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """What became of one scenario's uploads; the report also says when a scenario was skipped or failed, and why."""
    entry = Ledger(fault=request.node.name.removeprefix("test_"))
    LEDGERS.append(entry)
    yield entry
    outcome = request.node.stash.get(OUTCOME, None)
    if outcome is None:
        write_report()
        return
    if hasattr(outcome, "wasxfail"):
        entry.outcome = f"known product bug (xfail): {outcome.wasxfail}"
    elif outcome.skipped:
        reason = outcome.longrepr[2] if isinstance(outcome.longrepr, tuple) else str(outcome.longrepr)
        entry.outcome = f"skipped: {reason.removeprefix('Skipped: ')}"
    elif outcome.failed:
        entry.outcome = "FAILED: " + str(outcome.longrepr).strip().splitlines()[-1][:300]
    write_report()
