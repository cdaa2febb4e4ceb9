"""Blocking store calls (psycopg pool, minio SDK) made from request handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import psycopg
from starlette.concurrency import run_in_threadpool

from common.errors import TransientError
from ingest_api.problems import unavailable

P = ParamSpec("P")
T = TypeVar("T")


async def call_store(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``function`` off the event loop; a database or S3 that is down becomes 503 with Retry-After."""
    try:
        return await run_in_threadpool(function, *args, **kwargs)
    except (psycopg.OperationalError, TransientError) as exc:
        raise unavailable("a database or object storage") from exc
