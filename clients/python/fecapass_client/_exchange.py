"""How a call becomes HTTP requests, written once for both clients (sans-I/O): a generator that yields what to do
next (send a request, or sleep) and is sent back what happened (the response, or the transport's error).
``Fecapass`` and ``AsyncFecapass`` only carry those steps out, each with its own transport and sleep.

The retry policy lives here: 429 and 503 answers, a 409 ``idempotency_key_in_progress`` (the first attempt
of the same call is still running on the server) and connection errors are retried up to ``max_retries``
times, after the answer's Retry-After (capped) or, without one, a jittered exponential backoff. Every call
that creates something carries an Idempotency-Key, the same on each attempt, so a retry gets the first job or
user back instead of making a second one."""

from __future__ import annotations

import json
import random
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union, cast

import httpx

from fecapass_client.errors import ConnectionFailed, FecapassError, InvalidResponse, error_from_answer

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Retried statuses, and the one 409 that only says "the first attempt is still running: ask again".
RETRIED_STATUSES = frozenset({429, 503})
IN_PROGRESS = "idempotency_key_in_progress"
# Connection errors after which the request may have reached the server (unlike a refused connection).
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRIED_TRANSPORT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Call:
    """One API request, as both clients send it."""

    method: str
    path: str
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    idempotency_key: str | None = None
    wait: float = 0  # seconds the server may hold the answer (?wait=): added to the read timeout
    answers: frozenset[int] = frozenset()  # error statuses that are answers, not errors (health: 503)
    gone_is_done: bool = False  # DELETE: a 404 after an attempt that may have arrived means it was deleted

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = {IDEMPOTENCY_HEADER: self.idempotency_key} if self.idempotency_key else {}
        base = http.timeout
        timeout = httpx.Timeout(
            connect=base.connect,
            read=None if base.read is None else base.read + self.wait,
            write=base.write,
            pool=base.pool,
        )
        return http.build_request(
            self.method,
            self.path,
            params=dict(self.params),
            json=self.json,
            files=self.files,
            headers=headers,
            timeout=timeout,
        )


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the parsed JSON, None for an empty body


@dataclass(frozen=True)
class Send:
    call: Call


# What a step's outcome is: the response, the transport's error, or nothing (after a sleep).
Outcome = Union[httpx.Response, httpx.TransportError, None]  # noqa: UP007
Step = Union[Send, Sleep]  # noqa: UP007
T = TypeVar("T")
# An API operation: yields the calls to make (or sleeps) and is sent each call's answer; returns its result.
Operation = Generator[Union[Call, Sleep], Union[Answer, None], T]  # noqa: UP007
Plan = Generator[Step, Outcome, T]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one call: after Retry-After when the answer has one (at most ``retry_after_cap`` seconds),
    else after ``backoff_base * 2**retry`` seconds (at most ``backoff_cap``), of which the upper half is random so
    that clients refused together do not return together."""

    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    retry_after_cap: float = 30.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0**retry)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return response.text


def exchange(call: Call, policy: RetryPolicy, rng: random.Random) -> Generator[Step, Outcome, Answer]:
    """One call to its answer, retried as the policy says; raises the answer's error otherwise."""
    retry = 0
    may_have_arrived = False
    while True:
        outcome = yield Send(call)
        if isinstance(outcome, httpx.TransportError):
            if not isinstance(outcome, _RETRIED_TRANSPORT) or retry >= policy.max_retries:
                raise ConnectionFailed(
                    f"{call.method} {call.path}: {type(outcome).__name__}: {outcome}", code="connection_failed"
                ) from outcome
            may_have_arrived = may_have_arrived or not isinstance(outcome, _NEVER_SENT)
            delay = policy.delay(retry, None, rng)
        elif isinstance(outcome, httpx.Response):
            status, body = outcome.status_code, _body(outcome)
            # 2xx only: a redirect is not followed (the API key would go along) and not taken for an answer.
            if 200 <= status < 300 or status in call.answers:
                return Answer(status, body)
            if status == 404 and call.gone_is_done and may_have_arrived:
                return Answer(204, None)  # the attempt whose answer was lost deleted it
            error = error_from_answer(status, outcome.headers, body)
            if not _retried(error) or retry >= policy.max_retries:
                raise error
            delay = policy.delay(retry, error.retry_after, rng)
        else:
            raise TypeError(f"a send step got {outcome!r} back")
        retry += 1
        yield Sleep(delay)


def _retried(error: FecapassError) -> bool:
    return error.status in RETRIED_STATUSES or (error.status == 409 and error.code == IN_PROGRESS)


def plan(operation: Operation[T], policy: RetryPolicy, rng: random.Random) -> Plan[T]:
    """The steps of a whole operation: each of its calls through ``exchange``, its own sleeps as they are."""
    reply: Answer | None = None
    while True:
        try:
            step = operation.send(reply)
        except StopIteration as finished:
            return cast(T, finished.value)
        if isinstance(step, Sleep):
            yield step
            reply = None
        else:
            reply = yield from exchange(step, policy, rng)


def expect_object(answer: Answer | None) -> dict[str, Any]:
    if answer is None or not isinstance(answer.body, dict):
        raise InvalidResponse(f"expected a JSON object, got {answer!r}")
    return answer.body


def expect_list(answer: Answer | None) -> list[Any]:
    if answer is None or not isinstance(answer.body, list):
        raise InvalidResponse(f"expected a JSON list, got {answer!r}")
    return answer.body
