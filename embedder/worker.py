"""Builds the embed handler: the pack's recognizer, loaded once per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from common import clients
from common import settings as s
from common.modelpack import PackFiles, find_pack, load_session
from common.objects import ObjectStore
from embedder.model import FaceRecognizer
from embedder.stage import EmbedHandler

log = structlog.get_logger(__name__)


def build_recognizer(model: s.ModelSettings, pack: PackFiles) -> FaceRecognizer:
    return FaceRecognizer(load_session(pack.recognizer, model), pack.recognizer)


@contextmanager
def embed_handler() -> Iterator[EmbedHandler]:
    model = s.load(s.ModelSettings)
    s3 = s.load(s.S3Settings)
    pack = find_pack(model)
    recognizer = build_recognizer(model, pack)
    log.info("embed.model_loaded", pack=pack.name, recognizer=pack.recognizer.name, dim=recognizer.dim)
    yield EmbedHandler(ObjectStore(clients.minio_client(s3), s3.s3_bucket), recognizer, pack.name)
