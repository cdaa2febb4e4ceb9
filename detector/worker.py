"""Builds the detect and align handlers with their clients and models (composition root of each stage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from common import clients
from common import settings as s
from common.modelpack import PackFiles, find_pack, load_session
from common.objects import ObjectStore
from detector.model import FaceDetector
from detector.stages import AlignHandler, DetectHandler

log = structlog.get_logger(__name__)


def build_detector(model: s.ModelSettings, pack: PackFiles) -> FaceDetector:
    return FaceDetector(
        load_session(pack.detector, model),
        pack.detector,
        det_size=model.det_size,
        threshold=model.det_threshold,
        min_face_size=model.min_face_size,
    )


@contextmanager
def detect_handler() -> Iterator[DetectHandler]:
    model = s.load(s.ModelSettings)
    pipeline = s.load(s.PipelineSettings)
    s3 = s.load(s.S3Settings)
    store = ObjectStore(clients.minio_client(s3), s3.s3_bucket)
    pack = find_pack(model)
    detector = build_detector(model, pack)
    log.info("detect.model_loaded", pack=pack.name, detector=pack.detector.name)
    yield DetectHandler(store, detector, pipeline.max_image_pixels)


@contextmanager
def align_handler() -> Iterator[AlignHandler]:
    pipeline = s.load(s.PipelineSettings)
    s3 = s.load(s.S3Settings)
    yield AlignHandler(
        ObjectStore(clients.minio_client(s3), s3.s3_bucket), pipeline.crop_size, pipeline.max_image_pixels
    )
