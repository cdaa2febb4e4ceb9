"""Exception types a stage handler raises; the runner's reaction depends only on the type.

* ``JobFailed``: the job cannot succeed (no face, bad image). Ack, mark the job failed. Not dead-lettered:
  it is a normal outcome the client reads from the job.
* ``PoisonMessage``: the entry itself is unusable (malformed, references nothing). Dead-letter at once.
* ``DependencyUnavailable``: a store is down for everyone: retried in place, with backoff, while the outage lasts
  (up to a budget), counting no delivery.
* ``RetryThenFail``: this one message failed for a reason that may pass (one object unreadable while the store
  works): retried like a ``TransientError``; when its last delivery fails the same way, the job fails with the
  error's code instead of being dead-lettered.
* ``TransientError`` and anything else: leave the entry pending; it is redelivered after the visibility
  timeout and dead-lettered after ``max_deliveries``.
"""

from __future__ import annotations

from schemas.jobs import ErrorCode


class StageError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobFailed(StageError):
    pass


class PoisonMessage(StageError):
    pass


class TransientError(Exception):
    """The same message may succeed later (an object not there yet, a webhook receiver down). Each retry is a
    delivery: after ``max_deliveries`` the entry is dead-lettered."""


class DependencyUnavailable(TransientError):
    """A store the stage needs (S3, a database) is down. The runner retries the batch in place with backoff for
    up to ``outage_retry_seconds`` without counting deliveries, so an outage does not turn work into dead
    letters."""


class RetryThenFail(TransientError):
    """A failure of one message that may pass: each retry is a delivery; the last one fails the job with
    ``code`` (a client learns why from the job instead of an operator from a dead letter)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
