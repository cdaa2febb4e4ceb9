"""Request dependencies: the clients opened by the lifespan, reached through app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from redis import Redis as SyncRedis

from common.db.corrections import Corrections
from common.db.erasure import Erasure
from common.db.main_repository import MainRepository
from common.db.vector_repository import VectorRepository
from common.job_submit import JobSubmitter
from common.objects import ObjectStore
from common.transient import AsyncTransientStore
from ingest_api.active_pack import ActivePack
from ingest_api.backpressure import Backlog
from ingest_api.config import ApiConfig
from ingest_api.uploads import DecodeSlots
from ingest_api.waiter import JobWaiter

if TYPE_CHECKING:
    from ingest_api.auth import KeyChecker
    from ingest_api.collection_access import CollectionDirectory


@dataclass
class AppState:
    config: ApiConfig
    redis: aioredis.Redis
    store: ObjectStore  # kept photos (enroll)
    transient: AsyncTransientStore  # the other photos, in Redis (common/transient.py)
    submitter: JobSubmitter  # queues a job and stores its transient photos in one script (common/job_submit.py)
    main: MainRepository
    vectors: VectorRepository
    waiter: JobWaiter
    keys: KeyChecker
    presigner: ObjectStore  # signs URLs for the endpoint clients reach
    erasure: Erasure
    corrections: Corrections  # merge people, move faces
    backlog: Backlog
    active_pack: ActivePack
    decodes: DecodeSlots  # this process's bound on upload decoding (ingest_api/uploads.py)
    sync_redis: SyncRedis  # for the blocking helpers shared with the CLI (stream stats, dead letters)
    collections: CollectionDirectory  # collection names to rows, cached


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain def dependency on a worker thread, a hop per request for an attribute read.
    state: AppState = request.app.state.fecapass
    return state


State = Annotated[AppState, Depends(get_state)]
