"""Property-based run of the whole OpenAPI schema against a running API: no 5xx, no schema violations.

It gets databases, a Redis database and a bucket of its own, so its random deletes cannot touch other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from operations.services import LocalServices, free_port
from tests.e2e.conftest import create_key_in, fresh_installation
from tests.processes import wait_until_answers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fuzz_api(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    env = fresh_installation(services, "fuzz", redis_db=1)
    port = free_port()
    env.update(
        FECAPASS_MODEL_PACK="dlib",  # installed with the package; the API only describes it
        FECAPASS_API_PORT=str(port),
        FECAPASS_MAX_WAIT_SECONDS="0",  # no stage runs here: never hold a request open
    )
    log = (tmp_path_factory.mktemp("fuzz") / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "operations.cli", "api"], env={**os.environ, **env}, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{base}/health/live", timeout=30, process=process)
    key = create_key_in(env["FECAPASS_MAIN_DB_DSN"], "write")
    yield base, key
    process.send_signal(signal.SIGTERM)
    process.wait(30)


# More examples find more; the default keeps the run to seconds. FECAPASS_FUZZ_EXAMPLES=500 for a long run.
EXAMPLES = int(os.environ.get("FECAPASS_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def test_api_schema(fuzz_api: tuple[str, str]) -> None:
    base, key = fuzz_api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, headers={"X-API-Key": key}, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 14
    assert not failures, "\n\n".join(failures)
