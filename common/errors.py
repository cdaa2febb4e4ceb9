"""Exception types a stage handler raises; the runner's reaction depends only on the type.

* ``JobFailed``: the job cannot succeed (no face, bad image). Ack, mark the job failed. Not dead-lettered:
  it is a normal outcome the client reads from the job.
* ``PoisonMessage``: the entry itself is unusable (malformed, references nothing). Dead-letter at once.
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
    """A dependency is unavailable; the same message may succeed later."""
