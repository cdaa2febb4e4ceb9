"""The face detector: ``detect(image) -> list[Face]``. No I/O; the session is built by the caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from insightface.model_zoo.retinaface import RetinaFace


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    keypoints: np.ndarray  # 5x2: left eye, right eye, nose, left mouth, right mouth
    score: float

    @property
    def min_side(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceDetector:
    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        model_file: Path,
        *,
        det_size: int = 640,
        threshold: float = 0.5,
        min_face_size: int = 20,
    ) -> None:
        self._model = RetinaFace(model_file=str(model_file), session=session)
        self._model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
        if not self._model.use_kps:
            raise ValueError(f"{model_file.name} predicts no keypoints; alignment needs a 5-point detector")
        self.min_face_size = min_face_size

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces above threshold and minimum size, sorted left to right."""
        boxes, keypoints = self._model.detect(image_bgr)
        faces = [
            Face(box=box[:4].astype(np.float32), keypoints=kps.astype(np.float32), score=float(box[4]))
            for box, kps in zip(boxes, keypoints if keypoints is not None else [], strict=True)
        ]
        faces = [face for face in faces if face.min_side >= self.min_face_size]
        return sorted(faces, key=lambda face: float(face.box[0]))
