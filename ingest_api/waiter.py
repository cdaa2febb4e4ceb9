"""Wake requests that wait for their job from one shared Redis subscription (no polling)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import redis.asyncio as aioredis
import structlog

from schemas.jobs import JOB_DONE_CHANNEL
from schemas.text import decode_text

log = structlog.get_logger(__name__)


class JobWaiter:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._waiting: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="job-waiter")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(JOB_DONE_CHANNEL)
                    self._subscribed.set()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if message is not None:
                            self._wake(decode_text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted: wake everyone so they re-read, then resubscribe
                self._subscribed.clear()
                log.warning("api.waiter_reconnecting", error=repr(exc))
                for job_id in list(self._waiting):
                    self._wake(job_id)
                await asyncio.sleep(1)

    def _wake(self, job_id: str) -> None:
        for future in self._waiting.pop(job_id, set()):
            if not future.done():
                future.set_result(None)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str):  # type: ignore[no-untyped-def]
        """Register interest before reading the status, so a finish in between is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[job_id].add(future)
        try:
            yield future
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiting[job_id]
