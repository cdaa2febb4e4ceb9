"""The orphan sweep: delete original photos that no job and no face will ever read.

An upload stores its photo, then queues its job (hash and stream event in one MULTI). A submit that fails in
between deletes the photo itself (ingest_api/jobs.py); one whose process died, or whose delete failed too (S3
or Redis down), leaves an orphan: biometric data kept for nobody. The sweep finds them: an original older than
FECAPASS_ORPHAN_AFTER_SECONDS with no job hash (the job is neither queued nor in flight nor recently finished)
and no face row (an enrolled face keeps the photo of its own enroll job, faces.job_id) is deleted.

It runs in the API process, the only writer of originals, which holds S3, Redis and the main database already;
with several API processes a Redis lock lets one of them sweep per interval.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import redis.asyncio as aioredis
import structlog
from starlette.concurrency import run_in_threadpool

from common.db.main_repository import MainRepository
from common.objects import ORIGINALS_PREFIX, ObjectStore, job_of_original
from common.settings import ApiSettings
from schemas.jobs import job_key

log = structlog.get_logger(__name__)

LOCK_KEY = "fecapass:orphan-sweep"
PAGE = 500  # objects listed and checked at a time
# Orphans are rare: a crash now and then. When most old originals look orphaned, the API is far more likely
# pointed at the wrong (or an empty, freshly restored) database or Redis than facing that many crashes, and
# deleting would destroy every enrolled photo: the sweep then deletes nothing and says so.
SUSPICIOUS_ORPHANS = 100
SUSPICIOUS_SHARE = 0.5


class OrphanSweeper:
    def __init__(
        self,
        store: ObjectStore,
        client: aioredis.Redis,
        main: MainRepository,
        *,
        orphan_after_seconds: float,
        every_seconds: float,
    ) -> None:
        self.store = store
        self.client = client
        self.main = main
        self.orphan_after_seconds = orphan_after_seconds
        self.every_seconds = every_seconds

    async def run(self) -> None:
        """Sweep every interval (with jitter) while this process lives; a failed sweep waits for the next."""
        while True:
            await asyncio.sleep(self.every_seconds * random.uniform(0.9, 1.1))
            try:
                token = f"{os.getpid()}-{random.getrandbits(32)}"
                if await self.client.set(LOCK_KEY, token, nx=True, ex=max(1, int(self.every_seconds * 0.8))):
                    await self.sweep()
            except Exception as exc:  # a store down: the next interval tries again
                log.warning("api.orphan_sweep_failed", error=repr(exc))

    async def sweep(self, now: float | None = None) -> list[str]:
        """One pass over the originals; returns the keys deleted."""
        cutoff = (time.time() if now is None else now) - self.orphan_after_seconds
        orphans: list[str] = []
        old = 0
        after = ""
        while True:
            page = await run_in_threadpool(self.store.listing, ORIGINALS_PREFIX, after, PAGE)
            if not page:
                break
            after = page[-1].key
            candidates = [obj.key for obj in page if obj.modified < cutoff]
            old += len(candidates)
            orphans.extend(await self._orphans(candidates))
            if len(orphans) > SUSPICIOUS_ORPHANS and len(orphans) > SUSPICIOUS_SHARE * old:
                log.error(
                    "api.orphan_sweep_refused",
                    reason="most old originals have neither a job nor a face: is the API pointed at the right"
                    " main database and Redis?",
                    orphans=len(orphans),
                    old_originals=old,
                )
                return []
            if len(page) < PAGE:
                break
        for start in range(0, len(orphans), 1000):
            await run_in_threadpool(self.store.delete_many, orphans[start : start + 1000])
        log.info("api.orphan_sweep", deleted=len(orphans), old_originals=old, keys=orphans[:20])
        return orphans

    async def _orphans(self, keys: list[str]) -> list[str]:
        if not keys:
            return []
        jobs = sorted({job_of_original(key) for key in keys})
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                pipe.exists(job_key(job_id))
            has_hash = await pipe.execute()
        unknown = [job_id for job_id, exists in zip(jobs, has_hash, strict=True) if not exists]
        kept_by_face = await run_in_threadpool(self.main.jobs_with_faces, unknown)
        gone = set(unknown) - kept_by_face
        return [key for key in keys if job_of_original(key) in gone]


def start_orphan_sweep(
    settings: ApiSettings, store: ObjectStore, client: aioredis.Redis, main: MainRepository
) -> asyncio.Task[None] | None:
    """The sweep as a background task of the API's lifespan; None when FECAPASS_ORPHAN_SWEEP_SECONDS is 0."""
    if not settings.orphan_sweep_seconds:
        return None
    sweeper = OrphanSweeper(
        store,
        client,
        main,
        orphan_after_seconds=settings.orphan_after_seconds,
        every_seconds=settings.orphan_sweep_seconds,
    )
    return asyncio.create_task(sweeper.run(), name="orphan-sweep")
