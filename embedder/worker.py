"""Builds the embed handler: the configured pack's recognizer is loaded once, at start-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common import clients
from common import settings as s
from common.objects import ObjectStore
from detector.worker import loaded_library
from embedder.stage import EmbedHandler


@contextmanager
def embed_handler() -> Iterator[EmbedHandler]:
    s3 = s.load(s.S3Settings)
    store = ObjectStore(clients.minio_client(s3), s3.s3_bucket)
    yield EmbedHandler(store, loaded_library("embed", warm_recognizer=True), s.load(s.ModelSettings).embed_batch)
