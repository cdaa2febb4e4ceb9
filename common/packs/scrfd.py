"""The SCRFD/RetinaFace detector: ``detect(image) -> list[Face]``. No I/O; the session is built by the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
from insightface.model_zoo.retinaface import RetinaFace

from common.packs.base import Face, kept_faces


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
        # ctx_id 0, not -1: insightface resets a session to the CPU provider for a negative ctx_id, which would
        # undo FECAPASS_ORT_PROVIDERS (the session arrives with its providers chosen).
        self._model.prepare(ctx_id=0, input_size=(det_size, det_size), det_thresh=threshold)
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
        return kept_faces(faces, self.min_face_size)
