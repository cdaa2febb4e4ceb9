"""The backlog figure (ingest_api/backpressure.py): one look at Redis at a time, and uploads that arrive while it
runs are not held by it."""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aioredis

from ingest_api.backpressure import Backlog


def test_uploads_during_a_look_go_on_with_the_last_figure() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        backlog = Backlog(cast(aioredis.Redis, None), limit=10)
        looks, go_on = [], asyncio.Event()

        async def slow_look() -> None:  # four XINFO GROUPS while the event loop serves other requests
            looks.append(1)
            await go_on.wait()
            backlog._largest, backlog._checked_at = 7, asyncio.get_running_loop().time()
            backlog._since_check = 0

        backlog._refresh = slow_look  # type: ignore[method-assign]
        looking = asyncio.create_task(backlog.largest())
        await asyncio.sleep(0)
        backlog.accepted()
        during = [await asyncio.wait_for(backlog.largest(), timeout=1) for _ in range(3)]  # not held by the look
        go_on.set()
        return during, await looking, len(looks)

    during, after, looks = asyncio.run(scenario())
    assert during == [1, 1, 1]  # the last figure (none yet) plus what this process accepted since
    assert after == 7 and looks == 1
