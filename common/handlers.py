"""What a stage handler is and returns. Handlers do no stream commands; the runner does those."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from schemas.results import FinishedResult
from schemas.streams import Stage, StreamMessage


@dataclass
class Outcome:
    """What a handler produced for one message."""

    forward: StreamMessage | None = None  # sent to the next stage's stream
    result: FinishedResult | None = None  # final job result: the job is done
    status_fields: dict[str, str] = field(default_factory=dict)
    # Keys of bytes no later stage reads; the transient ones among them (common/transient.py) are deleted by the
    # same script as this write. A job's final write deletes all its transient bytes without being told.
    release: Sequence[str] = ()


HandlerResult = Outcome | BaseException


class StageHandler(Protocol):
    @property
    def stage(self) -> Stage: ...

    @property
    def message_type(self) -> type[StreamMessage]:
        """The model the runner parses this stage's entries into."""
        ...

    def handle_batch(self, messages: Sequence[Any]) -> list[HandlerResult]:
        """One result per message, in order. An exception in the list fails only its own message."""
        ...


M = TypeVar("M", bound=StreamMessage)


def per_message(handle: Callable[[M], Outcome]) -> Callable[[Sequence[M]], list[HandlerResult]]:
    """Adapt a one-message handler to the batch interface, isolating failures per message."""

    def handle_batch(messages: Sequence[M]) -> list[HandlerResult]:
        results: list[HandlerResult] = []
        for message in messages:
            try:
                results.append(handle(message))
            except Exception as exc:
                results.append(exc)
        return results

    return handle_batch
