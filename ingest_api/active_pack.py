"""Which pack new jobs are submitted with: the active pack in the vector database, re-read every few seconds.

Every stage of a job uses the pack stamped on it here, so a `fecapass models activate` in the middle of a job
cannot mix two packs' detections and embeddings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from starlette.concurrency import run_in_threadpool

from common.db.vector_repository import VectorRepository
from common.packs import ModelPackError
from common.packs.catalog import known_facts
from common.packs.library import PackLibrary

log = structlog.get_logger(__name__)

# How long an activation takes to reach every API process.
REFRESH_SECONDS = 5.0
# An upload never waits longer than this for the database to say which pack is active.
READ_TIMEOUT_SECONDS = 1.0


class ActivePack:
    def __init__(self, vectors: VectorRepository, packs: PackLibrary, refresh_seconds: float = REFRESH_SECONDS):
        self.vectors = vectors
        self.packs = packs
        self.refresh_seconds = refresh_seconds
        self._name: str | None = None
        self._dim: int | None = None
        self._read_at = float("-inf")
        self._reading = False

    @property
    def last_known(self) -> str:
        return self._name or self.packs.default_name

    async def name(self) -> str:
        if time.monotonic() - self._read_at >= self.refresh_seconds and not self._reading:
            self._reading = True  # one read at a time, however many uploads arrive meanwhile
            try:
                found = await asyncio.wait_for(run_in_threadpool(self.vectors.active), READ_TIMEOUT_SECONDS)
            except Exception as exc:  # a database outage must not stop uploads: keep the last known pack
                log.warning("api.active_pack_unknown", error=str(exc) or type(exc).__name__, using=self.last_known)
            else:
                name, dim = found or (self.packs.default_name, None)
                if name != self._name:
                    log.info("api.active_pack", pack=name, dim=dim, configured=self.packs.default_name)
                self._name, self._dim = name, dim
            finally:
                self._read_at = time.monotonic()
                self._reading = False
        return self.last_known

    async def describe(self) -> dict[str, object]:
        """What the active pack is: licence and threshold by name, dimension from the database once the pack
        has embedded a face (read with the name, never per call). The API needs no model files; where it has
        them (local mode), a pack not used yet is described from them."""
        name = await self.name()
        facts = {**known_facts(name), "dim": self._dim if name == self._name else None}
        if facts["dim"] is None:
            with contextlib.suppress(ModelPackError):  # installed on the stage machines only
                facts["dim"] = (await run_in_threadpool(self.packs.describe, name)).dim
        return facts
