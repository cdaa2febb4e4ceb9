"""Blocking store calls (psycopg pool, minio SDK) made from request handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


async def call_store(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``function`` off the event loop. A database or S3 that is down raises through: the problem handlers
    (ingest_api/problems.py, OUTAGES) answer every route's outage with 503 and Retry-After in one place."""
    return await run_in_threadpool(function, *args, **kwargs)
