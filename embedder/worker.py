"""Builds the embed handler: the configured pack's recognizer is loaded once, at start-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common import clients
from common import settings as s
from common.packs.library import warmed_library
from embedder.stage import EmbedHandler


@contextmanager
def embed_handler() -> Iterator[EmbedHandler]:
    models = s.load(s.ModelSettings)
    packs = warmed_library(models, "embed", warm_recognizer=True)
    ttl = s.load(s.PipelineSettings).transient_ttl_seconds
    objects = clients.job_bytes(s.load(s.S3Settings), s.load(s.RedisSettings), ttl)
    yield EmbedHandler(objects, packs, models.embed_batch)
