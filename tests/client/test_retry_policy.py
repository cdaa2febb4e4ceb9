"""The client's retry timing and error mapping, on canned answers (httpx.MockTransport): no server, no sleeping.
The real API's own 429 and 503 are in test_retries.py; this file covers what a test server cannot be made to
say on demand (an HTTP-date Retry-After, a huge one, none at all, an unknown code, a non-JSON error page)."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import random
import time
from collections.abc import Callable

import httpx
import pytest
from fecapass_client import (
    AsyncFecapass,
    Conflict,
    ConnectionFailed,
    Fecapass,
    FecapassError,
    NotFound,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from fecapass_client.errors import retry_after_seconds

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "about:blank", "title": "x", "status": status, "detail": f"{code} happened", "code": code}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **(headers or {})})


def queued_job(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        202,
        json={
            "job_id": "j1",
            "kind": "detect",
            "state": "queued",
            "status_url": "http://x/v1/jobs/j1",
            "image_key": "k",
        },
    )


class Script:
    """Answers in order (an exception is raised as the transport's), then ``then`` for every further request."""

    def __init__(self, *answers: httpx.Response | Exception, then: Handler = queued_job) -> None:
        self.answers = list(answers)
        self.then = then
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            return self.then(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, **options: object) -> tuple[Fecapass, list[float]]:
    api = Fecapass("http://fecapass.test", "key", transport=httpx.MockTransport(script), **options)  # type: ignore[arg-type]
    slept: list[float] = []
    api._sleep = slept.append
    return api, slept


def test_retry_after_is_honoured_and_capped() -> None:
    script = Script(
        problem(429, "too_many_uploads", {"Retry-After": "2"}),
        problem(503, "dependency_unavailable", {"Retry-After": "3600"}),
        problem(429, "backlog_full", {"Retry-After": "1.5"}),
    )
    api, slept = client(script, retry=RetryPolicy(retry_after_cap=30))
    assert api.detect(b"photo").job_id == "j1"
    assert slept == [2.0, 30.0, 1.5]
    assert len(script.requests) == 4


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    assert retry_after_seconds(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("-5") == 0


def test_without_retry_after_the_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=4.0)
    rng = random.Random(7)
    for retry, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [policy.delay(retry, None, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 100  # jittered: clients refused together do not return together
    api, slept = client(Script(problem(503, "busy"), problem(503, "busy"), problem(503, "busy")), retry=policy)
    api.detect(b"photo")
    assert len(slept) == 3 and 0.25 <= slept[0] <= 0.5 and 0.5 <= slept[1] <= 1.0 and 1.0 <= slept[2] <= 2.0


def test_retries_stop_after_max_retries_with_the_last_error() -> None:
    script = Script(then=lambda request: problem(429, "backlog_full", {"Retry-After": "10"}))
    api, slept = client(script, max_retries=3)
    with pytest.raises(RateLimited) as limited:
        api.search(b"photo")
    assert len(script.requests) == 4 and slept == [10.0, 10.0, 10.0]
    assert (limited.value.status, limited.value.code, limited.value.retry_after) == (429, "backlog_full", 10.0)


@pytest.mark.parametrize(
    ("answer", "kind", "code"),
    [
        (problem(400, "http_error"), FecapassError, "http_error"),
        (problem(404, "user_not_found"), NotFound, "user_not_found"),
        (problem(409, "email_taken"), Conflict, "email_taken"),
        (problem(500, "internal_error"), FecapassError, "internal_error"),
        (problem(418, "a_code_from_the_future"), FecapassError, "a_code_from_the_future"),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), FecapassError, "http_502"),
    ],
)
def test_other_errors_are_not_retried(answer: httpx.Response, kind: type[FecapassError], code: str) -> None:
    script = Script(answer)
    api, slept = client(script)
    with pytest.raises(kind) as raised:
        api.detect(b"photo")
    assert type(raised.value) is kind and raised.value.code == code and raised.value.status == answer.status_code
    assert len(script.requests) == 1 and slept == []


def test_a_duplicate_still_in_progress_is_asked_again_with_the_same_key() -> None:
    script = Script(problem(409, "idempotency_key_in_progress", {"Retry-After": "1"}))
    api, slept = client(script)
    api.enroll(1, b"photo")
    keys = {request.headers["Idempotency-Key"] for request in script.requests}
    assert len(script.requests) == 2 and len(keys) == 1 and slept == [1.0]


def test_every_creating_post_carries_one_key_per_call() -> None:
    script = Script(then=lambda request: queued_job(request))
    api, _ = client(script)
    api.enroll(1, b"a")
    api.enroll(1, b"a")
    api.enroll(1, b"a", idempotency_key="mine")
    api.search(b"a")
    api.verify(b"a", user_id=1)
    api.detect(b"a")
    keys = [request.headers.get("Idempotency-Key") for request in script.requests]
    assert None not in keys and keys[2] == "mine" and len(set(keys)) == len(keys)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_connection_errors_are_retried_and_then_reported() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut"))
    api, slept = client(script)
    assert api.detect(b"photo").job_id == "j1"
    assert len(slept) == 3 and len({request.headers["Idempotency-Key"] for request in script.requests}) == 1
    down = Script(then=refuse)
    api, slept = client(down, max_retries=2)
    with pytest.raises(ConnectionFailed) as failed:
        api.me()
    assert failed.value.code == "connection_failed" and failed.value.status is None and len(down.requests) == 3


def test_a_delete_whose_answer_was_lost_is_done() -> None:
    """The first attempt may have deleted it: the retry's 404 means done. A refused connection sent nothing, so
    there a 404 is the caller's to hear."""
    api, _ = client(Script(httpx.ReadError("reset"), problem(404, "user_not_found")))
    api.delete_user(5)
    api, _ = client(Script(httpx.ConnectError("refused"), problem(404, "user_not_found")))
    with pytest.raises(NotFound):
        api.delete_user(5)


def test_a_redirect_is_neither_followed_nor_taken_for_success() -> None:
    script = Script(then=lambda request: httpx.Response(307, headers={"Location": "http://elsewhere.test/v1/x"}))
    api, slept = client(script)
    with pytest.raises(FecapassError) as redirected:
        api.delete_user(5)
    assert (redirected.value.status, redirected.value.code) == (307, "http_307")
    assert [request.url.host for request in script.requests] == ["fecapass.test"] and slept == []


def test_health_when_not_ready_is_an_answer() -> None:
    script = Script(httpx.Response(503, json={"status": "unavailable", "checks": {"redis": "error: ConnectionError"}}))
    api, slept = client(script)
    health = api.health()
    assert not health.ok and health.checks == {"redis": "error: ConnectionError"} and slept == []


def test_wait_for_job_long_polls_until_done() -> None:
    states = iter(["queued", "detecting", "done"])

    def job(request: httpx.Request) -> httpx.Response:
        body = {
            "job_id": "j1",
            "kind": "detect",
            "state": next(states),
            "status_url": "http://x/v1/jobs/j1",
            "image_key": "k",
        }
        if body["state"] == "done":
            body["result"] = {"faces_seen": 0, "faces": []}
        return httpx.Response(200, json=body)

    script = Script(then=job)
    api, slept = client(script)
    done = api.wait_for_job("j1", timeout=60)
    assert done.done and done.result is not None and done.result.faces_seen == 0  # type: ignore[union-attr]
    assert [float(request.url.params["wait"]) for request in script.requests] == pytest.approx([30, 30, 30], abs=1)
    # The canned server answered at once, before the wait: the client paused, growing, between polls.
    assert slept == [0.5, 1.0]


def test_the_async_twin_has_the_same_methods_and_policy() -> None:
    public = {name for name in dir(Fecapass) if not name.startswith("_")} - {"close"}
    assert public == {name for name in dir(AsyncFecapass) if not name.startswith("_")} - {"aclose"}
    for name in public - {"retry"}:
        sync, twin = getattr(Fecapass, name), getattr(AsyncFecapass, name)
        assert inspect.iscoroutinefunction(twin), name
        assert inspect.signature(sync) == inspect.signature(twin), name
    assert (
        inspect.signature(Fecapass.__init__).parameters.keys()
        == inspect.signature(AsyncFecapass.__init__).parameters.keys()
    )

    script = Script(problem(429, "too_many_uploads", {"Retry-After": "2"}), problem(503, "busy", {"Retry-After": "1"}))

    async def scenario() -> tuple[str, list[float]]:
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        async with AsyncFecapass("http://fecapass.test", "key", transport=httpx.MockTransport(script)) as api:
            api._sleep = sleep
            job = await api.detect(b"photo")
            with pytest.raises(Unavailable):
                script.answers = [problem(503, "busy")] * 5
                await api.detect(b"photo")
        return job.job_id, slept

    job_id, slept = asyncio.run(scenario())
    assert job_id == "j1" and slept[:2] == [2.0, 1.0] and len(slept) == 2 + 4
