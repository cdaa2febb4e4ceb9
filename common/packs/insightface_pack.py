"""An insightface-layout pack (buffalo_l, buffalo_s, antelopev2, ...): SCRFD, ArcFace alignment, ONNX recognizer.

Each part is loaded on first use, so a detect process never holds the recognizer and an embed process never
holds the detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import cv2
import numpy as np

from common.packs.alignment import align_face, fast_similarity_transform
from common.packs.arcface import FaceRecognizer
from common.packs.base import Face, PackInfo
from common.packs.insightface_files import PackFiles, load_session
from common.packs.regions import SAMPLING_MARGIN, Region, covering, on_canvas
from common.packs.scrfd import FaceDetector
from common.settings import ModelSettings


class ArcFaceAligner:
    """5-point similarity warp onto the ArcFace template: geometry only, no weights."""

    def __init__(self, crop_size: int) -> None:
        self.crop_size = crop_size

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        return align_face(image_bgr, face.keypoints, self.crop_size)

    def region(self, face: Face, image_size: tuple[int, int]) -> Region:
        # The crop's outermost pixel centres, mapped back into the photo: the warp samples inside their hull.
        inverse = cv2.invertAffineTransform(fast_similarity_transform(face.keypoints, self.crop_size))
        last = self.crop_size - 1
        corners = np.array([[0, 0, 1], [last, 0, 1], [0, last, 1], [last, last, 1]], dtype=np.float64) @ inverse.T
        return covering(corners, image_size, SAMPLING_MARGIN)

    def align_region(self, pixels: np.ndarray, region: Region, face: Face) -> np.ndarray:
        return self.align(on_canvas(pixels, region), face)


class InsightFacePack:
    def __init__(self, files: PackFiles, info: PackInfo, settings: ModelSettings) -> None:
        self.files = files
        self._info = info
        self._settings = settings
        self._aligner = ArcFaceAligner(info.crop_size)

    @property
    def info(self) -> PackInfo:
        return self._info

    @cached_property
    def _detector(self) -> FaceDetector:
        return FaceDetector(
            load_session(self.files.detector, self._settings, "detector"),
            self.files.detector,
            det_size=self._settings.det_size,
            threshold=self._settings.det_threshold,
            min_face_size=self._settings.min_face_size,
        )

    @cached_property
    def _recognizer(self) -> FaceRecognizer:
        return FaceRecognizer(load_session(self.files.recognizer, self._settings, "recognizer"), self.files.recognizer)

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        return self._detector.detect(image_bgr)

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self._aligner.align(image_bgr, face)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self._recognizer.embed(crops)
