"""The webhook sender's handler: signed POSTs of finished jobs, delivered concurrently, a few per receiver.

A batch's deliveries run at once on a thread pool (``FECAPASS_WEBHOOK_CONCURRENCY`` in all), at most
``FECAPASS_WEBHOOK_PER_RECEIVER`` to one receiver (host:port); more for that receiver wait for one of its slots.
The batch waits ``FECAPASS_WEBHOOK_BATCH_WAIT_SECONDS`` for them. A delivery still going on then (a receiver
that accepts and never answers) finishes on its own while the batch is settled and the next one starts; its
entry stays pending, and when it comes back (after the visibility timeout) a delivery that succeeded meanwhile
is acknowledged without a second POST. One that never got a slot comes back as "retry later", not tried. So a
slow or dead receiver holds only its own slots, never the other receivers' webhooks.

A destination the egress policy refuses (common/egress.py) is a poison message: dead-lettered at once.
Every text that leaves here (log fields, error and dead-letter reasons) has URL credentials redacted.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass

import httpx
import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from common.egress import EgressRefused, target
from common.errors import PoisonMessage, TransientError
from common.handlers import HandlerResult, Outcome
from common.redaction import redact_urls
from common.webhooks import SIGNATURE_HEADER, sign
from schemas.jobs import ErrorCode
from schemas.streams import Stage, WebhookMessage

log = structlog.get_logger(__name__)

# Deliveries that finished after their batch had moved on, kept until their entry comes back (bounded: an
# entry another consumer took never comes back here).
REMEMBERED_DELIVERIES = 10_000


class DeliveryFailed(TransientError):
    pass


class ReceiverBusy(TransientError):
    """Every slot of the receiver stayed taken while the batch waited: not tried now, tried on redelivery."""


class StillInFlight(TransientError):
    """The delivery outlived the batch's wait; it goes on, and the redelivered entry learns how it ended."""


@dataclass(frozen=True)
class DeliveryLimits:
    per_receiver: int = 4
    concurrency: int = 16
    batch_wait_seconds: float = 2.0
    attempts: int = 3


class DaemonPool:
    """A fixed set of daemon threads. Not ThreadPoolExecutor: the interpreter joins its threads at exit, so one
    delivery stuck on a silent receiver would keep a stopping stage alive past its drain time."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, name=f"webhook-{i}", daemon=True) for i in range(workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, work: Callable[[], None], future: Future[None]) -> None:
        """Run ``work`` on a free thread, its outcome into ``future``."""
        self._queue.put((future, work))

    def shutdown(self) -> None:
        """Cancel what has not started; what runs dies with the process (its entries are pending)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._workers:
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                work()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)


def _receiver(message: WebhookMessage) -> str:
    host, port = target(message.url)
    return f"{host}:{port}"


def delivery_key(message: WebhookMessage) -> str:
    """Same entry (or its redelivery) -> same key."""
    return hashlib.sha256(f"{message.job_id}\n{message.url}\n{message.body}".encode()).hexdigest()


class WebhookHandler:
    stage = Stage.WEBHOOK
    message_type = WebhookMessage

    def __init__(self, client: httpx.Client, secret: bytes, limits: DeliveryLimits | None = None) -> None:
        self.client = client
        self.secret = secret
        self.limits = limits or DeliveryLimits()
        self._pool = DaemonPool(self.limits.concurrency)
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[None]] = {}
        self._busy: Counter[str] = Counter()  # receiver -> deliveries in flight
        self._waiting: dict[str, deque[tuple[str, WebhookMessage, Future[None]]]] = {}  # receiver -> no slot yet
        self._left_behind: set[str] = set()  # in flight, their batch already settled
        self._delivered_later: OrderedDict[str, None] = OrderedDict()

    def close(self) -> None:
        self._pool.shutdown()

    # -- the runner's interface ------------------------------------------------------------------------

    def handle_batch(self, messages: Sequence[WebhookMessage]) -> list[HandlerResult]:
        started = [self._start(message) for message in messages]
        wait([f for f in started if isinstance(f, Future)], timeout=self.limits.batch_wait_seconds)
        return [self._result(message, f) for message, f in zip(messages, started, strict=True)]

    def _start(self, message: WebhookMessage) -> Future[None] | HandlerResult:
        try:
            receiver = _receiver(message)
        except EgressRefused as exc:
            return self._refused(message, exc)
        key = delivery_key(message)
        with self._lock:
            if key in self._delivered_later:
                del self._delivered_later[key]
                log.info("webhook.delivered", job_id=message.job_id, url=redact_urls(message.url), earlier=True)
                return Outcome()
            if key in self._in_flight:
                return StillInFlight(f"the previous try to {receiver} is still in flight")
            future: Future[None] = Future()
            self._in_flight[key] = future
            if self._busy[receiver] < self.limits.per_receiver:
                self._dispatch(key, receiver, message, future)
            else:  # waits for one of the receiver's slots, as long as the batch waits
                self._waiting.setdefault(receiver, deque()).append((key, message, future))
        return future

    def _dispatch(self, key: str, receiver: str, message: WebhookMessage, future: Future[None]) -> None:
        """Take a slot of ``receiver`` and start the delivery. Called with the lock held."""
        self._busy[receiver] += 1
        future.add_done_callback(lambda done: self._finished(key, receiver, done))
        self._pool.submit(lambda: self._deliver(message), future)

    def _result(self, message: WebhookMessage, started: Future[None] | HandlerResult) -> HandlerResult:
        if not isinstance(started, Future):
            return started
        with self._lock:  # with _finished's lock: a delivery is either settled here or remembered there
            if not started.done():
                key, receiver = delivery_key(message), _receiver(message)
                waiting = self._waiting.get(receiver, deque())
                for queued in waiting:
                    if queued[2] is started:  # never got a slot: not tried at all
                        waiting.remove(queued)
                        if not waiting:
                            del self._waiting[receiver]
                        started.cancel()
                        del self._in_flight[key]
                        return ReceiverBusy(f"{self.limits.per_receiver} deliveries to {receiver} in flight")
                self._left_behind.add(key)
                return StillInFlight(f"POST {redact_urls(message.url)} still in flight; its entry is retried later")
        error = started.exception()
        return Outcome() if error is None else error

    def _finished(self, key: str, receiver: str, future: Future[None]) -> None:
        with self._lock:
            self._busy[receiver] -= 1
            if not self._busy[receiver]:
                del self._busy[receiver]
            self._in_flight.pop(key, None)
            if key in self._left_behind:
                self._left_behind.discard(key)
                if not future.cancelled() and future.exception() is None:
                    self._delivered_later[key] = None
                    while len(self._delivered_later) > REMEMBERED_DELIVERIES:
                        self._delivered_later.popitem(last=False)
            waiting = self._waiting.get(receiver)
            if waiting:
                next_key, next_message, next_future = waiting.popleft()
                if not waiting:
                    del self._waiting[receiver]
                self._dispatch(next_key, receiver, next_message, next_future)

    # -- one delivery, on a pool thread ----------------------------------------------------------------

    def _deliver(self, message: WebhookMessage) -> None:
        # Quick retries sleep here, on this delivery's own thread and slot, never in the batch.
        for attempt in Retrying(
            stop=stop_after_attempt(self.limits.attempts),
            wait=wait_random_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type(DeliveryFailed),
            reraise=True,
        ):
            with attempt:
                status = self._post(message)
        log.info("webhook.delivered", job_id=message.job_id, url=redact_urls(message.url), status=status)

    def _post(self, message: WebhookMessage) -> int:
        body = message.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "X-Fecapass-Job-Id": message.job_id,
        }
        try:
            response = self.client.post(message.url, content=body, headers=headers)
        except EgressRefused as exc:
            raise self._refused(message, exc) from None
        except Exception as exc:  # httpx's errors and any other: their text may quote the URL, so redact it
            # "from None": the chained original would carry the URL into a logged traceback.
            raise DeliveryFailed(redact_urls(f"POST {message.url}: {type(exc).__name__}: {exc}")) from None
        if response.status_code >= 300:
            raise DeliveryFailed(redact_urls(f"POST {message.url} answered {response.status_code}"))
        return response.status_code

    def _refused(self, message: WebhookMessage, exc: EgressRefused) -> PoisonMessage:
        reason = redact_urls(f"callback URL {message.url} refused: {exc}")
        log.warning("webhook.refused", job_id=message.job_id, reason=reason)
        return PoisonMessage(ErrorCode.CALLBACK_URL_REFUSED, reason)
