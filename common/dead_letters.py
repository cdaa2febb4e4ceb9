"""Dead-letter streams: list, show, replay into the stage they came from, purge (the CLI and the API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from common import status
from schemas.jobs import STAGE_STATE
from schemas.streams import Stage
from schemas.text import decode_fields, decode_text

DEAD_FIELD_PREFIX = "dead_"


@dataclass(frozen=True)
class DeadLetter:
    stage: Stage
    message_id: str
    fields: dict[str, str]

    @property
    def original_fields(self) -> dict[FieldT, EncodableT]:
        return {k: v for k, v in self.fields.items() if not k.startswith(DEAD_FIELD_PREFIX)}


def counts(client: redis.Redis) -> dict[Stage, int]:
    return {stage: int(client.xlen(stage.dead_letter_stream)) for stage in Stage}


Rows = list[tuple[bytes, dict[bytes, bytes]]]


def _letters(stage: Stage, rows: Rows) -> list[DeadLetter]:
    return [DeadLetter(stage, decode_text(message_id), decode_fields(fields or {})) for message_id, fields in rows]


def entries(client: redis.Redis, stage: Stage, count: int = 100) -> list[DeadLetter]:
    return _letters(stage, cast(Rows, client.xrange(stage.dead_letter_stream, count=count)))


def find(client: redis.Redis, stage: Stage, message_id: str) -> DeadLetter | None:
    found = _letters(stage, cast(Rows, client.xrange(stage.dead_letter_stream, min=message_id, max=message_id)))
    return found[0] if found else None


def replay(client: redis.Redis, letter: DeadLetter, job_ttl_seconds: int) -> str:
    """Put the original entry back on its stage's stream and the job back in flight, atomically."""
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(letter.stage.stream, letter.original_fields)
        pipe.xdel(letter.stage.dead_letter_stream, letter.message_id)
        job_id = letter.fields.get("job_id")
        if job_id and letter.stage in STAGE_STATE:
            status.queue_reopened(pipe, job_id, letter.stage, job_ttl_seconds)
        new_id = pipe.execute()[0]
    return decode_text(new_id)


def purge(client: redis.Redis, stage: Stage, message_ids: list[str] | None = None) -> int:
    """Delete the given dead letters, or all of the stage's."""
    if message_ids:
        return int(client.xdel(stage.dead_letter_stream, *message_ids))
    removed = int(client.xlen(stage.dead_letter_stream))
    client.delete(stage.dead_letter_stream)
    return removed
