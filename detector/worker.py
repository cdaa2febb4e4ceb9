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
    objects = clients.job_bytes(s.load(s.S3Settings), s.load(s.RedisSettings), pipeline.transient_ttl_seconds)
    yield DetectHandler(objects, packs, pipeline.max_image_pixels)


@contextmanager
def align_handler() -> Iterator[AlignHandler]:
    pipeline = s.load(s.PipelineSettings)
    # Alignment is geometry: this stage needs no model files (the crop size comes with each job).
    packs = PackLibrary(s.load(s.ModelSettings))
    objects = clients.job_bytes(s.load(s.S3Settings), s.load(s.RedisSettings), pipeline.transient_ttl_seconds)
    yield AlignHandler(objects, packs, pipeline.max_image_pixels)
