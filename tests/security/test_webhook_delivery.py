"""The webhook sender against a real Valkey and real receivers on 127.0.0.1: refused destinations are dead-
lettered at once, and a receiver that never answers holds only its own deliveries (issue 15)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from common.egress import EgressPolicy, EgressTransport, Rules
from common.errors import PoisonMessage
from common.handlers import Outcome
from common.runner import StageRunner, ensure_group
from common.settings import StreamSettings
from common.webhooks import SIGNATURE_HEADER, verify
from operations.services import LocalServices
from schemas.streams import Stage, WebhookMessage
from tests.security.receivers import receiver, silent_receiver, webhook_worker_env
from webhook_sender.stage import DeliveryLimits, ReceiverBusy, StillInFlight, WebhookHandler
from webhook_sender.worker import webhook_handler

pytestmark = pytest.mark.integration

SECRET = "webhook-test-secret"
STREAMS = StreamSettings(read_count=4, block_ms=50, claim_idle_ms=60_000, max_deliveries=5)


@contextmanager
def sender(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[WebhookHandler]:
    """The handler as the stage process builds it, from FECAPASS_* variables."""
    monkeypatch.setenv("FECAPASS_WEBHOOK_SECRET", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(f"FECAPASS_{name}", value)
    with webhook_handler() as handler:
        yield handler


def enqueue(client: redis.Redis, job_id: str, url: str) -> str:
    message = WebhookMessage(job_id=job_id, url=url, body=f'{{"job_id":"{job_id}","state":"done"}}')
    return client.xadd(Stage.WEBHOOK.stream, message.to_fields()).decode()


def pending_ids(client: redis.Redis) -> set[str]:
    rows = client.xpending_range(Stage.WEBHOOK.stream, Stage.WEBHOOK.group, min="-", max="+", count=100)
    return {row["message_id"].decode() for row in rows}


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(Stage.WEBHOOK.dead_letter_stream)
    ]


def test_a_loopback_receiver_is_not_reached_by_default_and_the_entry_is_dead_lettered_at_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver() as hook, sender(monkeypatch) as handler:
        ensure_group(redis_client, Stage.WEBHOOK)
        enqueue(redis_client, "job-refused", hook.url)
        StageRunner(redis_client, handler, STREAMS, job_ttl_seconds=600, consumer="t").run_once()
    assert hook.requests == []
    [dead] = dead_letters(redis_client)
    assert dead["dead_error_code"] == "callback_url_refused" and dead["dead_deliveries"] == "1"
    assert "loopback" in dead["dead_error"] and "FECAPASS_WEBHOOK_ALLOW" in dead["dead_error"]
    assert pending_ids(redis_client) == set()


def test_the_same_receiver_is_reached_when_allowed(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    with receiver() as hook, sender(monkeypatch, WEBHOOK_ALLOW="127.0.0.1/32") as handler:
        ensure_group(redis_client, Stage.WEBHOOK)
        enqueue(redis_client, "job-allowed", hook.url)
        StageRunner(redis_client, handler, STREAMS, job_ttl_seconds=600, consumer="t").run_once()
    [(path, headers, body)] = hook.requests
    assert path == "/hook" and headers["X-Fecapass-Job-Id"] == "job-allowed"
    assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
    assert dead_letters(redis_client) == [] and pending_ids(redis_client) == set()


def test_a_receiver_that_never_answers_does_not_hold_the_others(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: four callbacks to a receiver that accepts and never answers, then a healthy one. Before, the
    healthy webhook arrived 270 s after its job; the bound here is a generous 10 s against a 60 s timeout."""
    env = {"WEBHOOK_ALLOW": "127.0.0.1/32", "WEBHOOK_TIMEOUT_SECONDS": "60", "WEBHOOK_ATTEMPTS": "1"}
    with silent_receiver() as silent, receiver() as healthy, sender(monkeypatch, **env) as handler:
        ensure_group(redis_client, Stage.WEBHOOK)
        slow_ids = {enqueue(redis_client, f"job-slow-{i}", silent.url) for i in range(4)}  # one full batch
        healthy_id = enqueue(redis_client, "job-healthy", healthy.url)
        runner = StageRunner(redis_client, handler, STREAMS, job_ttl_seconds=600, consumer="t")
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            assert healthy.arrived.wait(10), "the healthy receiver's webhook waited on the silent one"
            for _ in range(4):
                assert silent.accepted.acquire(timeout=10), "the silent receiver's deliveries were not all tried"
            deadline = time.monotonic() + 10
            while healthy_id in pending_ids(redis_client) and time.monotonic() < deadline:
                time.sleep(0.05)
            # The healthy entry is acknowledged while the silent receiver's are still pending.
            assert pending_ids(redis_client) == slow_ids
            assert healthy.requests[0][1]["X-Fecapass-Job-Id"] == "job-healthy"
        finally:
            runner.request_stop()
            thread.join(15)
        assert not thread.is_alive()


def loopback_handler(limits: DeliveryLimits) -> tuple[httpx.Client, WebhookHandler]:
    policy = EgressPolicy(allow=Rules.parse("127.0.0.1/32", "FECAPASS_WEBHOOK_ALLOW"))
    client = httpx.Client(transport=EgressTransport(policy), timeout=30)
    return client, WebhookHandler(client, SECRET.encode(), limits)


def message(job_id: str, url: str) -> WebhookMessage:
    return WebhookMessage(job_id=job_id, url=url, body=f'{{"job_id":"{job_id}"}}')


def test_at_most_n_deliveries_in_flight_per_receiver() -> None:
    client, handler = loopback_handler(DeliveryLimits(per_receiver=2, batch_wait_seconds=0.5, attempts=1))
    with silent_receiver() as silent, receiver() as healthy, client:
        batch = [message(f"slow-{i}", silent.url) for i in range(6)] + [message("ok", healthy.url)]
        results = handler.handle_batch(batch)
        assert [type(r) for r in results] == [StillInFlight] * 2 + [ReceiverBusy] * 4 + [Outcome]
        for _ in range(2):
            assert silent.accepted.acquire(timeout=10)
        assert len(silent.connections) == 2  # the busy ones were never sent
        assert len(healthy.requests) == 1
        handler.close()


def test_a_busy_fast_receiver_gets_its_whole_batch_through_its_slots() -> None:
    """The bound queues deliveries for a receiver's slots; it does not turn a busy receiver's webhooks away."""
    client, handler = loopback_handler(DeliveryLimits(per_receiver=2, batch_wait_seconds=30, attempts=1))
    with receiver() as busy, client:
        busy.hold_seconds = 0.02
        results = handler.handle_batch([message(f"many-{i}", busy.url) for i in range(12)])
        assert all(isinstance(r, Outcome) for r in results), results
        assert len(busy.requests) == 12
        assert busy.most_at_once <= 2
        handler.close()


def test_a_delivery_that_outlives_its_batch_is_acknowledged_on_redelivery_without_a_second_post() -> None:
    client, handler = loopback_handler(DeliveryLimits(batch_wait_seconds=0.2, attempts=1))
    with receiver() as late, client:
        late.answer_after = threading.Event()
        entry = message("late", late.url)
        assert isinstance(handler.handle_batch([entry])[0], StillInFlight)
        assert late.arrived.wait(10)
        late.answer_after.set()
        deadline = time.monotonic() + 10
        result = handler.handle_batch([entry])[0]
        while not isinstance(result, Outcome) and time.monotonic() < deadline:
            assert isinstance(result, StillInFlight)  # redelivered while the first POST still runs: no new one
            time.sleep(0.05)
            result = handler.handle_batch([entry])[0]
        assert isinstance(result, Outcome)
        assert len(late.requests) == 1
        handler.close()


def test_a_refused_scheme_is_poison_without_a_request() -> None:
    client, handler = loopback_handler(DeliveryLimits())
    with client:
        [result] = handler.handle_batch([message("ftp", "ftp://user:pw@127.0.0.1/x")])
    assert isinstance(result, PoisonMessage) and "pw" not in result.message
    handler.close()


def test_a_stopping_stage_does_not_wait_for_a_receiver_that_never_answers(
    services: LocalServices, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = webhook_worker_env(services, WEBHOOK_TIMEOUT_SECONDS="300", WEBHOOK_ATTEMPTS="1", DRAIN_SECONDS="5")
    log_path = tmp_path / "webhook.log"
    with silent_receiver() as silent, log_path.open("wb") as log:
        slow_id = enqueue(redis_client, "job-silent", silent.url)
        process = subprocess.Popen(
            [sys.executable, "-m", "operations.cli", "worker", "webhook"], env=env, stdout=log, stderr=log
        )
        try:
            assert silent.accepted.acquire(timeout=30), log_path.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(30)  # far below the 300 s the delivery could still take
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail("the webhook stage did not stop within 30 s of SIGTERM")
    text = log_path.read_text()
    # Within its drain time, not cut off by it (a thread pool the interpreter joins at exit would be).
    assert code == 0 and "stage.drain_timeout" not in text and "Traceback" not in text, text
    assert "stage.stopped" in text
    assert pending_ids(redis_client) == {slow_id}  # left for another consumer to claim
