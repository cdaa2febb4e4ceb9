"""The detect and align stage handlers. No stream commands here: the runner owns those."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import JobFailed, TransientError
from common.handlers import HandlerResult, Outcome, per_message
from common.imaging import ImageError, ImageTooLarge, decode, encode_png
from common.objects import ObjectMissing, ObjectStore, crop_key, discard_job_objects
from detector.align import align_face
from detector.model import Face, FaceDetector
from detector.quality import sharpness
from schemas.jobs import ErrorCode
from schemas.streams import FaceBox, JobKind, PipelineMessage, Stage

# One face per photo is compared for these kinds: the largest, usually the subject.
LARGEST_FACE_ONLY = (JobKind.ENROLL, JobKind.VERIFY)


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


def to_wire(face: Face, source: int = 0) -> FaceBox:
    x1, y1, x2, y2 = (round(float(v), 2) for v in face.box)
    return FaceBox(
        box=(x1, y1, x2, y2),
        keypoints=[(round(float(x), 2), round(float(y), 2)) for x, y in face.keypoints],
        score=round(face.score, 4),
        source=source,
    )


class DetectHandler:
    stage = Stage.DETECT
    message_type = PipelineMessage

    def __init__(self, store: ObjectStore, detector: FaceDetector, max_image_pixels: int) -> None:
        self.store = store
        self.detector = detector
        self.max_image_pixels = max_image_pixels

    def handle(self, message: PipelineMessage) -> Outcome:
        try:
            return self._handle(message)
        except JobFailed:
            discard_job_objects(self.store, message.job_id)  # a failed job keeps no photo
            raise

    def _handle(self, message: PipelineMessage) -> Outcome:
        kept: list[FaceBox] = []
        seen = 0
        for source, key in enumerate(message.image_keys):
            image = load_image(self.store, key, self.max_image_pixels)
            faces = self.detector.detect(image)
            if not faces:
                where = "the second photo" if source else "the photo"
                raise JobFailed(ErrorCode.NO_FACE, f"no face found in {where}")
            if message.kind is JobKind.DETECT:
                discard_job_objects(self.store, message.job_id)
                return Outcome(result=detect_result(image, faces))
            seen += len(faces) if source == 0 else 0
            chosen = [max(faces, key=lambda face: face.area)] if message.kind in LARGEST_FACE_ONLY else faces
            kept += [to_wire(face, source) for face in chosen]
        forward = message.model_copy(update={"faces": kept, "faces_seen": seen})
        return Outcome(forward=forward, status_fields={"faces_seen": str(seen)})

    def handle_batch(self, messages: Sequence[PipelineMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)


def detect_result(image: np.ndarray, faces: list[Face]) -> dict[str, Any]:
    return {
        "faces_seen": len(faces),
        "faces": [
            {
                **to_wire(face).model_dump(exclude={"crop_key", "source"}),
                "quality": {"size": round(face.min_side, 1), "sharpness": round(sharpness(image, face.box), 1)},
            }
            for face in faces
        ],
    }


class AlignHandler:
    stage = Stage.ALIGN
    message_type = PipelineMessage

    def __init__(self, store: ObjectStore, crop_size: int, max_image_pixels: int) -> None:
        self.store = store
        self.crop_size = crop_size
        self.max_image_pixels = max_image_pixels

    def handle(self, message: PipelineMessage) -> Outcome:
        faces = message.require_faces()
        keys = message.image_keys
        images = {
            source: load_image(self.store, keys[source], self.max_image_pixels) for source in {f.source for f in faces}
        }
        aligned: list[FaceBox] = []
        for index, face in enumerate(faces):
            crop = align_face(images[face.source], np.asarray(face.keypoints, dtype=np.float32), self.crop_size)
            # Deterministic key: a redelivered message overwrites the same object instead of adding one.
            key = crop_key(message.job_id, index)
            self.store.put(key, encode_png(crop), content_type="image/png")
            aligned.append(face.model_copy(update={"crop_key": key}))
        return Outcome(forward=message.model_copy(update={"faces": aligned}))

    def handle_batch(self, messages: Sequence[PipelineMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)
