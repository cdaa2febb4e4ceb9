"""Property-based run of the whole OpenAPI schema against a running API: no 5xx, no schema violations.

It gets databases, a Redis database and a bucket of its own, so its random deletes cannot touch other tests.
"""

from __future__ import annotations

import os
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

from operations.installation import Installation
from operations.services import LocalServices
from tests.e2e.conftest import create_key_in, fresh_installation

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fuzz_api(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    env = fresh_installation(services, "fuzz", redis_db=1)
    env.update(
        FECAPASS_MODEL_PACK="dlib",  # installed with the package; the API only describes it
        FECAPASS_MAX_WAIT_SECONDS="0",  # no stage runs here: never hold a request open
    )
    api = Installation(env=env, log_dir=tmp_path_factory.mktemp("fuzz"), stages=())
    api.start(ready_timeout=30)
    keys = {scope: create_key_in(env["FECAPASS_MAIN_DB_DSN"], scope) for scope in ("write", "read")}
    yield api.base_url, keys
    api.stop(timeout=30)


# More examples find more; the default keeps the run to seconds. FECAPASS_FUZZ_EXAMPLES=500 for a long run.
EXAMPLES = int(os.environ.get("FECAPASS_FUZZ_EXAMPLES", "25"))
# A read key's writes and every call without a key are refused before the request is read: a few inputs an
# operation show that whatever the input the refusal holds (a read key's reads get half the write key's share).
EXAMPLES_OF_SCOPE = {"write": EXAMPLES, "read": max(1, EXAMPLES // 2), None: max(1, EXAMPLES // 5)}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


# The same checks hold whoever asks: a write key, a read key (403 on writes), and no key at all (401 everywhere).
@pytest.mark.parametrize("scope", ["write", "read", None])
def test_api_schema(fuzz_api: tuple[str, dict[str, str]], scope: str | None) -> None:
    base, keys = fuzz_api
    headers = {"X-API-Key": keys[scope]} if scope else {}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_OF_SCOPE[scope], deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 14
    assert not failures, "\n\n".join(failures)
