"""Builds the detect and align handlers with their clients and packs (composition root of each stage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common import clients
from common import settings as s
from common.packs.library import PackLibrary, warmed_library
from detector.stages import AlignHandler, DetectHandler


@contextmanager
def detect_handler() -> Iterator[DetectHandler]:
    pipeline = s.load(s.PipelineSettings)
    packs = warmed_library(s.load(s.ModelSettings), "detect", warm_detector=True)
    yield DetectHandler(clients.object_store(s.load(s.S3Settings)), packs, pipeline.max_image_pixels)


@contextmanager
def align_handler() -> Iterator[AlignHandler]:
    pipeline = s.load(s.PipelineSettings)
    # Alignment is geometry: this stage needs no model files (the crop size comes with each job).
    packs = PackLibrary(s.load(s.ModelSettings))
    yield AlignHandler(clients.object_store(s.load(s.S3Settings)), packs, pipeline.max_image_pixels)
