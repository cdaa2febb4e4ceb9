"""Property-based run of the whole OpenAPI schema against a running API: no 5xx, no schema violations.

It gets databases, a Redis database and a bucket of its own, so its random deletes cannot touch other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.objects import ObjectStore
from common.services import LocalServices, free_port
from indexer.migrate import migrate_all
from tests.e2e.conftest import create_key_in
from tests.processes import wait_until_answers

pytestmark = pytest.mark.e2e

FUZZ_MAIN, FUZZ_VECTOR, FUZZ_BUCKET = "fecapass_fuzz_main", "fecapass_fuzz_vector", "fecapass-fuzz"


@pytest.fixture(scope="module")
def fuzz_api(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with psycopg.connect(services.dsn("postgres"), autocommit=True) as conn:
        for database in (FUZZ_MAIN, FUZZ_VECTOR):
            conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
            conn.execute(f'CREATE DATABASE "{database}"')
    migrate_all(services.dsn(FUZZ_MAIN), services.dsn(FUZZ_VECTOR))
    env = {**services.environment(), "FECAPASS_S3_BUCKET": FUZZ_BUCKET}
    from common import clients
    from common.settings import S3Settings

    ObjectStore(
        clients.minio_client(
            S3Settings(
                s3_endpoint=services.s3_endpoint,
                s3_access_key=services.credentials.s3_access_key,
                s3_secret_key=services.credentials.s3_secret_key,
            )
        ),
        FUZZ_BUCKET,
    ).ensure_bucket()
    port = free_port()
    model_root = tmp_path_factory.mktemp("fuzz-models")
    (model_root / "models" / "fuzzpack").mkdir(parents=True)  # readiness only looks for the folder
    env.update(
        FECAPASS_MODEL_ROOT=str(model_root),
        FECAPASS_MODEL_PACK="fuzzpack",
        FECAPASS_MAIN_DB_DSN=services.dsn(FUZZ_MAIN),
        FECAPASS_VECTOR_DB_DSN=services.dsn(FUZZ_VECTOR),
        FECAPASS_REDIS_URL=services.redis_url.rsplit("/", 1)[0] + "/1",
        FECAPASS_API_PORT=str(port),
        FECAPASS_MAX_WAIT_SECONDS="0",  # no stage runs here: never hold a request open
    )
    log = (tmp_path_factory.mktemp("fuzz") / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "api"], env={**os.environ, **env}, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{base}/health/live", timeout=30, process=process)
    key = create_key_in(services.dsn(FUZZ_MAIN), "write")
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
