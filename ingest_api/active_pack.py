"""Which pack new jobs are submitted with: the active pack in the vector database, re-read every few seconds.

Every stage of a job uses the pack stamped on it here, so a `fecapass models activate` in the middle of a job
cannot mix two packs' detections and embeddings.
"""

from __future__ import annotations

import contextlib
import time

import structlog
from starlette.concurrency import run_in_threadpool

from common.packs import ModelPackError
from common.packs.catalog import known_facts
from common.packs.library import PackLibrary
from indexer.vector_repository import VectorRepository

log = structlog.get_logger(__name__)

# How long an activation takes to reach every API process.
REFRESH_SECONDS = 5.0


class ActivePack:
    def __init__(self, vectors: VectorRepository, packs: PackLibrary, refresh_seconds: float = REFRESH_SECONDS):
        self.vectors = vectors
        self.packs = packs
        self.refresh_seconds = refresh_seconds
        self._name: str | None = None
        self._read_at = float("-inf")

    async def name(self) -> str:
        if time.monotonic() - self._read_at >= self.refresh_seconds:
            try:
                found = await run_in_threadpool(self.vectors.active_pack)
            except Exception as exc:  # a database outage must not stop uploads: keep the last known pack
                log.warning("api.active_pack_unknown", error=str(exc), using=self._name or self.packs.default_name)
            else:
                name = found or self.packs.default_name
                if name != self._name:
                    log.info("api.active_pack", pack=name, configured=self.packs.default_name)
                self._name = name
                self._read_at = time.monotonic()
        return self._name or self.packs.default_name

    async def describe(self) -> dict[str, object]:
        """What the active pack is: licence and threshold by name, dimension from the database once the pack
        has embedded a face. The API needs no model files; where it has them (local mode), a pack not used yet
        is described from them."""
        name = await self.name()
        facts = {**known_facts(name), "dim": await run_in_threadpool(self.vectors.pack_dim, name)}
        if facts["dim"] is None:
            with contextlib.suppress(ModelPackError):  # installed on the stage machines only
                facts["dim"] = (await run_in_threadpool(self.packs.describe, name)).dim
        return facts
