"""The settle pass of unknown faces (common/db/unknown_faces.py): erase faces past their collection's retention,
and place again the faces still waiting for a cluster. It runs in the API process, which holds both databases and
S3 already and is not on a stage's path (a search answered is not delayed by it); with several API processes a
Redis lock lets one of them settle per interval. `fecapass clusters settle` runs the same pass by hand."""

from __future__ import annotations

import asyncio
import os
import random

import redis.asyncio as aioredis
import structlog
from starlette.concurrency import run_in_threadpool

from common.db.unknown_faces import UnknownFaces
from common.settings import ApiSettings

log = structlog.get_logger(__name__)

LOCK_KEY = "fecapass:clusters-settle"


async def settle_forever(unknown: UnknownFaces, client: aioredis.Redis, every_seconds: float) -> None:
    """Settle every interval (with jitter) while this process lives; a failed pass waits for the next."""
    while True:
        await asyncio.sleep(every_seconds * random.uniform(0.9, 1.1))
        try:
            token = f"{os.getpid()}-{random.getrandbits(32)}"
            if await client.set(LOCK_KEY, token, nx=True, ex=max(1, int(every_seconds * 0.8))):
                await run_in_threadpool(unknown.settle)
        except Exception as exc:  # a store down: the next interval tries again
            log.warning("api.clusters_settle_failed", error=repr(exc))


def start_clusters_settle(
    settings: ApiSettings, unknown: UnknownFaces, client: aioredis.Redis
) -> asyncio.Task[None] | None:
    """The pass as a background task of the API's lifespan; None when FECAPASS_CLUSTERS_SETTLE_SECONDS is 0."""
    if not settings.clusters_settle_seconds:
        return None
    return asyncio.create_task(settle_forever(unknown, client, settings.clusters_settle_seconds), name="clusters")
