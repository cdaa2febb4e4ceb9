"""create_app(config): the FastAPI application, its lifespan owning every client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from common import clients
from common.db.corrections import Corrections
from common.db.erasure import Erasure
from common.db.main_repository import MainRepository
from common.db.unknown_faces import UnknownFaces
from common.db.vector_repository import VectorRepository
from common.job_submit import JobSubmitter
from common.metrics import StreamCollector
from common.objects import ObjectStore
from common.packs.library import PackLibrary
from common.runner import ensure_group
from common.transient import AsyncTransientStore
from ingest_api.active_pack import ActivePack
from ingest_api.auth import Authenticate, KeyChecker, check_every_operation_declared
from ingest_api.backpressure import Backlog
from ingest_api.body_limit import BodySizeLimit
from ingest_api.clusters_sweeper import start_clusters_settle
from ingest_api.collection_access import CollectionDirectory
from ingest_api.config import ApiConfig
from ingest_api.console import MOUNT_PATH, console_files
from ingest_api.deps import AppState
from ingest_api.openapi import install_openapi
from ingest_api.problems import install_problem_handlers
from ingest_api.request_metrics import RequestMetrics
from ingest_api.routers import (
    collections,
    faces,
    health,
    job_status,
    keys,
    metrics,
    pipeline,
    recognition,
    unknown,
    users,
)
from ingest_api.sweeper import start_orphan_sweep
from ingest_api.uploads import DecodeSlots
from ingest_api.waiter import JobWaiter
from schemas.streams import Stage

log = structlog.get_logger(__name__)

# Every router under /v1: the key check reads the scope each of their routes declares (auth.py).
V1_ROUTERS = (
    users.router,
    faces.router,
    recognition.router,
    job_status.router,
    keys.router,
    pipeline.router,
    collections.router,
    unknown.router,
)


async def _log_pack(active_pack: ActivePack) -> None:
    try:
        facts = await active_pack.describe()
    except Exception as exc:  # the vector database may still be starting: readiness reports it
        log.warning("api.pack_unknown", error=str(exc), configured=active_pack.packs.default_name)
    else:
        log.info("api.pack", **facts)


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_client = clients.async_redis_client(config.redis)
        sync_redis = clients.redis_client(config.redis)  # for the metrics collector, run in a thread
        main_pool = clients.main_db_pool(config.database)
        vector_pool = clients.vector_db_pool(config.database)
        # Open without waiting: the API starts (and reports not-ready) while a database is still down.
        main_pool.open(wait=False)
        vector_pool.open(wait=False)
        store = ObjectStore(clients.minio_client(config.s3), config.s3.s3_bucket)
        presigner = ObjectStore(clients.minio_client(config.s3, public=True), config.s3.s3_bucket)
        waiter = JobWaiter(redis_client)
        api, sweep, settle = config.api, None, None
        try:
            # Groups exist before the first event, whatever order the processes start in.
            for stage in Stage:
                await run_in_threadpool(ensure_group, sync_redis, stage)
            app.state.metrics_registry = _registry(REGISTRY, StreamCollector(sync_redis))
            await waiter.start()
            main, vectors = MainRepository(main_pool), VectorRepository(vector_pool)
            active_pack = ActivePack(vectors, PackLibrary(config.model))
            erasure = Erasure(main, vectors, store, sync_redis, config.pipeline.job_ttl_seconds)
            await _log_pack(active_pack)
            app.state.fecapass = AppState(
                config=config,
                redis=redis_client,
                store=store,
                transient=AsyncTransientStore(redis_client),
                submitter=JobSubmitter(
                    redis_client, config.pipeline.transient_ttl_seconds, config.pipeline.transient_max_bytes
                ),
                main=main,
                vectors=vectors,
                waiter=waiter,
                keys=KeyChecker(main),
                presigner=presigner,
                erasure=erasure,
                corrections=Corrections(main, erasure),
                backlog=Backlog(redis_client, config.pipeline.max_backlog),
                active_pack=active_pack,
                decodes=DecodeSlots(
                    api.max_concurrent_decodes, api.max_decode_pixels_in_flight, api.decode_wait_seconds
                ),
                sync_redis=sync_redis,
                collections=CollectionDirectory(main),
            )
            sweep = start_orphan_sweep(config.api, store, redis_client, main)
            settle = start_clusters_settle(config.api, UnknownFaces(main, vectors, store), redis_client)
            yield
        finally:
            if sweep is not None:
                sweep.cancel()  # between pages; a delete in flight finishes in its thread
            if settle is not None:
                settle.cancel()
            await waiter.stop()
            await redis_client.aclose()
            sync_redis.close()
            main_pool.close()
            vector_pool.close()

    app = FastAPI(
        title="Fecapass",
        version="0.1.0",
        description="Enroll faces for users, then find who is in a photo. Uploads become jobs; "
        "read a job at its status_url, or pass `wait` to get the result in the same call.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    install_openapi(app)
    # Every URL handed to clients starts here, whatever Host or X-Forwarded-* a request carries.
    app.state.public_url = config.api.base_url
    # Two photos (verify) plus multipart framing; each photo is also checked against the limit on its own.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=2 * config.pipeline.max_upload_bytes + 64 * 1024,
        timeout_seconds=config.api.body_timeout_seconds,
        min_rate=config.api.body_min_rate,
    )
    # Outside the body limits: a client without a valid key is refused before any body is read or measured.
    secured = [route for router in V1_ROUTERS for route in router.routes]
    app.add_middleware(Authenticate, routes=secured, max_uploads=config.api.max_uploads_per_key)
    app.add_middleware(RequestMetrics)  # outermost: refused requests are counted too
    for router in (*V1_ROUTERS, health.router, metrics.router):
        app.include_router(router)
    check_every_operation_declared(app, secured)
    app.mount(MOUNT_PATH, console_files(config.s3), name="console")

    return app


class _Union(Collector):
    def __init__(self, sources: Iterable[Collector]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            yield from source.collect()


def _registry(*sources: Collector) -> CollectorRegistry:
    """This process's metrics plus the per-app stream collector, without touching the global registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(sources))
    return registry
