"""create_app(config): the FastAPI application, its lifespan owning every client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from common import clients
from common.objects import ObjectStore
from common.runner import ensure_group
from indexer.main_repository import MainRepository
from indexer.vector_repository import VectorRepository
from ingest_api.config import ApiConfig
from ingest_api.deps import AppState
from ingest_api.problems import install_problem_handlers
from ingest_api.routers import health, job_status, recognition, users
from ingest_api.waiter import JobWaiter
from schemas.streams import Stage


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_client = clients.async_redis_client(config.redis)
        main_pool = clients.main_db_pool(config.database)
        vector_pool = clients.vector_db_pool(config.database)
        # Open without waiting: the API starts (and reports not-ready) while a database is still down.
        main_pool.open(wait=False)
        vector_pool.open(wait=False)
        store = ObjectStore(clients.minio_client(config.s3), config.s3.s3_bucket)
        waiter = JobWaiter(redis_client)
        try:
            # Groups exist before the first event, whatever order the processes start in.
            sync_redis = clients.redis_client(config.redis)
            try:
                for stage in Stage:
                    await run_in_threadpool(ensure_group, sync_redis, stage)
            finally:
                sync_redis.close()
            await waiter.start()
            app.state.fecapass = AppState(
                config=config,
                redis=redis_client,
                store=store,
                main=MainRepository(main_pool),
                vectors=VectorRepository(vector_pool),
                waiter=waiter,
            )
            yield
        finally:
            await waiter.stop()
            await redis_client.aclose()
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
    for router in (users.router, recognition.router, job_status.router, health.router):
        app.include_router(router)
    return app
