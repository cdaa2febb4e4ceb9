"""Builds the detect and align handlers with their clients and packs (composition root of each stage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import structlog

from common import clients
from common import settings as s
from common.objects import ObjectStore
from common.packs.library import PackLibrary
from detector.stages import AlignHandler, DetectHandler

log = structlog.get_logger(__name__)


def loaded_library(stage: str, *, warm_detector: bool = False, warm_recognizer: bool = False) -> PackLibrary:
    """The process's packs, with the configured one loaded now: a missing pack stops the process at start-up
    instead of failing its first job. Other packs (a re-index) load when a job asks for them."""
    packs = PackLibrary(s.load(s.ModelSettings))
    pack = packs.get()
    if warm_detector:
        pack.detect(np.zeros((64, 64, 3), dtype=np.uint8))
    if warm_recognizer:
        size = pack.info.crop_size
        pack.embed([np.zeros((size, size, 3), dtype=np.uint8)])
    log.info("stage.pack_loaded", stage=stage, **pack.info.summary())
    return packs


def _store() -> ObjectStore:
    s3 = s.load(s.S3Settings)
    return ObjectStore(clients.minio_client(s3), s3.s3_bucket)


@contextmanager
def detect_handler() -> Iterator[DetectHandler]:
    pipeline = s.load(s.PipelineSettings)
    yield DetectHandler(_store(), loaded_library("detect", warm_detector=True), pipeline.max_image_pixels)


@contextmanager
def align_handler() -> Iterator[AlignHandler]:
    pipeline = s.load(s.PipelineSettings)
    # Alignment is geometry: this stage needs no model files (the crop size comes with each job).
    yield AlignHandler(_store(), PackLibrary(s.load(s.ModelSettings)), pipeline.max_image_pixels)
