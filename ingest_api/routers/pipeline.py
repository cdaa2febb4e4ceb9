"""The pipeline as operators see it: each stage's stream, its dead letters (replay, purge) and the active pack."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from common import dead_letters
from common.metrics import stream_stats
from common.packs.catalog import gallery_threshold
from ingest_api.auth import READ, WRITE
from ingest_api.deps import AppState, State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from schemas.console import DeadLetter, Pipeline, Purged, Replayed, StageStats
from schemas.gallery import DEFAULT_COLLECTION_ID
from schemas.streams import Stage

router = APIRouter(prefix="/v1/pipeline", tags=["pipeline"], dependencies=[READ])
# A Redis stream entry id; anything else would reach XRANGE and fail there.
MessageId = Annotated[str, Path(pattern=r"^\d{1,20}-\d{1,20}$", description="the dead letter's entry id")]


@router.get("", response_model=Pipeline)
async def pipeline(state: State) -> Pipeline:
    """Every stage's backlog, pending entries, consumers, lag and dead letters, read from Redis now."""
    by_stream = {stage.stream: stage for stage in Stage}
    rows = await run_in_threadpool(stream_stats, state.sync_redis)
    stages = [
        StageStats(
            stage=by_stream[row.stream].value,
            stream=row.stream,
            group=row.group,
            backlog=row.backlog,
            pending=row.pending,
            consumers=row.consumers,
            lag=row.lag,
            oldest_pending_seconds=row.oldest_pending_seconds,
            dead_letters=row.dead_letters,
        )
        for row in rows
    ]
    try:
        pack = await state.active_pack.describe()
    except Exception as exc:  # the vector database may be down: the streams are still worth showing
        pack = {"name": state.active_pack.last_known, "error": str(exc) or type(exc).__name__}
    threshold, source, size = await _search_threshold(state, pack)
    return Pipeline(stages=stages, model_pack=pack, threshold=threshold, threshold_source=source, gallery_size=size)


async def _search_threshold(
    state: AppState, pack: dict[str, object]
) -> tuple[float | None, Literal["setting", "gallery"] | None, int | None]:
    """The threshold a search without one uses now, as the index stage chooses it (indexer/threshold.py): the
    setting, else from the size of the gallery a search without a collection compares with (the active pack's
    faces in the default collection); the pack's calibrated one where the size cannot be read."""
    setting = state.config.pipeline.similarity_threshold
    if setting is not None:
        return setting, "setting", None
    name, calibrated = str(pack["name"]), pack.get("threshold")
    try:
        size = await run_in_threadpool(state.active_pack.vectors.count, name, DEFAULT_COLLECTION_ID)
    except Exception:  # the vector database is down: said in model_pack.error
        fixed = float(calibrated) if isinstance(calibrated, int | float) else None
        return fixed, None, None
    chosen = gallery_threshold(name, size, state.config.pipeline.false_matches_per_search)
    return chosen, "gallery", size


def _view(letter: dead_letters.DeadLetter) -> DeadLetter:
    fields = letter.fields
    return DeadLetter(
        stage=letter.stage.value,
        message_id=letter.message_id,
        job_id=fields.get("job_id"),
        error_code=fields.get("dead_error_code"),
        error=fields.get("dead_error"),
        fields=fields,
    )


@router.get("/dead-letters", response_model=list[DeadLetter])
async def list_dead_letters(
    state: State,
    stage: Annotated[Stage | None, Query(description="only this stage's (default: every stage)")] = None,
    count: Annotated[int, Query(ge=1, le=500, description="most entries per stage, oldest first")] = 50,
) -> list[DeadLetter]:
    stages = [stage] if stage else list(Stage)
    found = []
    for each in stages:
        found += await run_in_threadpool(dead_letters.entries, state.sync_redis, each, count)
    return [_view(letter) for letter in found]


async def _find(state: AppState, stage: Stage, message_id: str) -> dead_letters.DeadLetter:
    # Both parts of a stream id are 64-bit: a larger one names no entry (and XRANGE would refuse it).
    fits = all(int(part) < 2**64 for part in message_id.split("-"))
    letter = await run_in_threadpool(dead_letters.find, state.sync_redis, stage, message_id) if fits else None
    if letter is None:
        raise ApiError(404, "dead_letter_not_found", f"no dead letter {message_id} in {stage.dead_letter_stream}")
    return letter


@router.post(
    "/dead-letters/{stage}/{message_id}/replay", response_model=Replayed, dependencies=[WRITE], responses=problems(404)
)
async def replay_dead_letter(stage: Stage, message_id: MessageId, state: State) -> Replayed:
    """Put the entry back on its stage's stream (and its job back in flight)."""
    letter = await _find(state, stage, message_id)
    ttl = state.config.pipeline.job_ttl_seconds
    new_id = await run_in_threadpool(dead_letters.replay, state.sync_redis, letter, ttl)
    return Replayed(stage=stage.value, message_id=new_id)


@router.delete("/dead-letters/{stage}/{message_id}", status_code=204, dependencies=[WRITE], responses=problems(404))
async def purge_dead_letter(stage: Stage, message_id: MessageId, state: State) -> Response:
    await _find(state, stage, message_id)
    await run_in_threadpool(dead_letters.purge, state.sync_redis, stage, [message_id])
    return Response(status_code=204)


@router.delete("/dead-letters/{stage}", response_model=Purged, dependencies=[WRITE])
async def purge_stage(stage: Stage, state: State) -> Purged:
    """Delete every dead letter of the stage."""
    removed = await run_in_threadpool(dead_letters.purge, state.sync_redis, stage, None)
    return Purged(stage=stage.value, removed=removed)
