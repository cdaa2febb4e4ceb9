from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ingest_api.deps import State
from schemas.api import Health

router = APIRouter(prefix="/health", tags=["health"])

CHECK_TIMEOUT_S = 3.0


@router.get("/live", response_model=Health)
async def live() -> Health:
    return Health(status="ok")


async def _check(name: str, probe: Callable[[], Any]) -> tuple[str, str]:
    try:
        await asyncio.wait_for(run_in_threadpool(probe), timeout=CHECK_TIMEOUT_S)
    except Exception as exc:
        return name, f"error: {type(exc).__name__}"
    return name, "ok"


@router.get("/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(state: State) -> JSONResponse:
    """Ready when both databases, Redis and the bucket answer. The body names the active model pack, its
    licence and dimension (the stage processes check that they have its files when they start)."""
    pack: dict[str, Any] = {}

    async def describe_pack() -> None:
        try:
            pack.update(await asyncio.wait_for(state.active_pack.describe(), timeout=CHECK_TIMEOUT_S))
        except Exception as exc:
            pack.update(name=state.active_pack.last_known, error=str(exc) or type(exc).__name__)

    async def ping_redis() -> tuple[str, str]:
        try:
            await asyncio.wait_for(state.redis.ping(), timeout=CHECK_TIMEOUT_S)
        except Exception as exc:
            return "redis", f"error: {type(exc).__name__}"
        return "redis", "ok"

    results = await asyncio.gather(
        _check("main_db", state.main.ping),
        _check("vector_db", state.vectors.ping),
        _check("s3", state.store.ping),
        ping_redis(),
        describe_pack(),
    )
    checks = dict(result for result in results if result is not None)
    healthy = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks, model_pack=pack)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
