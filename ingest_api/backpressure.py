"""Refuse uploads with 429 while any stage's backlog is past FECAPASS_MAX_BACKLOG, so Redis cannot grow
without bound when the stages fall behind (or are all down)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
import redis.exceptions

from common.metrics import backlog
from schemas.streams import PIPELINE

# Reading four XINFO GROUPS per upload would cost more than the upload; a second-old figure is enough.
REFRESH_SECONDS = 1.0


class Backlog:
    def __init__(self, client: aioredis.Redis, limit: int) -> None:
        self.client = client
        self.limit = limit
        self._checked_at = 0.0
        self._largest = 0
        self._since_check = 0  # uploads this process accepted since the last look at Redis
        self._refreshing = asyncio.Lock()  # one look at a time

    async def largest(self) -> int:
        """The most entries waiting (undelivered + pending) in any one stage."""
        # Uploads that arrive while another looks go on with the last figure: a look (four XINFO GROUPS between
        # other requests' work) took 4-30 ms under load, and every upload in flight waited for it once a second.
        if self._stale() and not self._refreshing.locked():
            async with self._refreshing:
                if self._stale():
                    await self._refresh()
        return self._largest + self._since_check

    def _stale(self) -> bool:
        return time.monotonic() - self._checked_at >= REFRESH_SECONDS

    async def _refresh(self) -> None:
        sizes = [0]
        for stage in PIPELINE:
            try:
                groups = await self.client.xinfo_groups(stage.stream)
            except redis.exceptions.ResponseError:  # the stream is gone (Redis lost its data): empty
                continue
            for group in groups:
                lag = group.get("lag")
                # The length only where Redis cannot tell the lag: one XLEN less per look in the usual case.
                length = 0 if lag is not None else int(await self.client.xlen(stage.stream))
                sizes.append(backlog(int(group["pending"]), int(lag) if lag is not None else None, length))
        self._largest = max(sizes)
        self._checked_at = time.monotonic()
        self._since_check = 0

    async def full(self) -> bool:
        return await self.largest() >= self.limit

    def accepted(self) -> None:
        """Count an upload against the cached figure until the next look at Redis."""
        self._since_check += 1
