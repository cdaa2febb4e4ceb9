"""The detect and align stage handlers. No stream commands here: the runner owns those."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import JobFailed, TransientError
from common.imaging import ImageError, ImageTooLarge, decode, encode_png
from common.objects import ObjectMissing, ObjectStore, crop_key
from common.runner import HandlerResult, Outcome, per_message
from detector.align import align_face
from detector.model import Face, FaceDetector
from schemas.jobs import ErrorCode
from schemas.streams import FaceBox, JobKind, PipelineMessage, Stage


def load_image(store: ObjectStore, key: str, max_pixels: int) -> np.ndarray:
    try:
        data = store.get(key)
    except ObjectMissing as exc:
        # Retried, then dead-lettered: the object may still be replicating to this S3 endpoint.
        raise TransientError(f"object {key} is missing") from exc
    try:
        return decode(data, max_pixels)
    except ImageTooLarge as exc:
        raise JobFailed(ErrorCode.IMAGE_TOO_LARGE, str(exc)) from exc
    except ImageError as exc:
        raise JobFailed(ErrorCode.UNDECODABLE_IMAGE, str(exc)) from exc


def to_wire(face: Face) -> FaceBox:
    x1, y1, x2, y2 = (round(float(v), 2) for v in face.box)
    return FaceBox(
        box=(x1, y1, x2, y2),
        keypoints=[(round(float(x), 2), round(float(y), 2)) for x, y in face.keypoints],
        score=round(face.score, 4),
    )


class DetectHandler:
    stage = Stage.DETECT

    def __init__(self, store: ObjectStore, detector: FaceDetector, max_image_pixels: int) -> None:
        self.store = store
        self.detector = detector
        self.max_image_pixels = max_image_pixels

    def handle(self, message: PipelineMessage) -> Outcome:
        image = load_image(self.store, message.image_key, self.max_image_pixels)
        faces = self.detector.detect(image)
        if not faces:
            raise JobFailed(ErrorCode.NO_FACE, "no face found in the photo")
        # An enroll photo enrolls one person: the largest face, usually the subject.
        kept = [max(faces, key=lambda face: face.area)] if message.kind is JobKind.ENROLL else faces
        forward = message.model_copy(update={"faces": [to_wire(face) for face in kept], "faces_seen": len(faces)})
        return Outcome(forward=forward, status_fields={"faces_seen": str(len(faces))})

    def handle_batch(self, messages: Sequence[PipelineMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)


class AlignHandler:
    stage = Stage.ALIGN

    def __init__(self, store: ObjectStore, crop_size: int, max_image_pixels: int) -> None:
        self.store = store
        self.crop_size = crop_size
        self.max_image_pixels = max_image_pixels

    def handle(self, message: PipelineMessage) -> Outcome:
        faces = message.require_faces()
        image = load_image(self.store, message.image_key, self.max_image_pixels)
        aligned: list[FaceBox] = []
        for index, face in enumerate(faces):
            crop = align_face(image, np.asarray(face.keypoints, dtype=np.float32), self.crop_size)
            # Deterministic key: a redelivered message overwrites the same object instead of adding one.
            key = crop_key(message.job_id, index)
            self.store.put(key, encode_png(crop), content_type="image/png")
            aligned.append(face.model_copy(update={"crop_key": key}))
        return Outcome(forward=message.model_copy(update={"faces": aligned}))

    def handle_batch(self, messages: Sequence[PipelineMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)
