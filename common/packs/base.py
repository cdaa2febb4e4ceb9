"""The model-pack interface the stages depend on: detect, align, embed, and what the pack is.

A pack is a detector, an aligner and a recognizer that belong together: the recognizer was trained on crops
made by that aligner from that detector's landmarks. Implementations do no I/O besides loading their weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.packs.regions import Region


class ModelPackError(RuntimeError):
    """A pack that cannot be found or loaded; the message says where it looked and what to do."""


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    keypoints: np.ndarray  # 5x2, in the pack's own landmark convention
    score: float  # the detector's confidence, on the detector's own scale

    @property
    def min_side(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times larger."""
        return Face(box=self.box * np.float32(factor), keypoints=self.keypoints * np.float32(factor), score=self.score)


def kept_faces(found: Sequence[Face], min_face_size: int) -> list[Face]:
    """Detections without the small ones, left to right."""
    faces = [face for face in found if face.min_side >= min_face_size]
    return sorted(faces, key=lambda face: float(face.box[0]))


@dataclass(frozen=True)
class PackInfo:
    name: str
    family: str  # "insightface" or "dlib": which implementation loads it
    dim: int  # embedding dimension
    crop_size: int  # side of the square aligned crop the recognizer takes
    licence: str
    commercial_use: bool  # False where the weights' terms forbid it or are unknown
    threshold: float  # default cosine similarity for "same person" (search and verify)
    threshold_source: str  # where that number comes from
    location: str  # folder or package the weights are read from

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "dim": self.dim,
            "crop_size": self.crop_size,
            "licence": self.licence,
            "commercial_use": self.commercial_use,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "location": self.location,
        }


class Aligner(Protocol):
    crop_size: int

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The face warped to the recognizer's crop: crop_size x crop_size x 3 BGR."""
        ...

    def region(self, face: Face, image_size: tuple[int, int]) -> Region:
        """Every pixel ``align`` reads for this face, in a photo of ``image_size`` (height, width)."""
        ...

    def align_region(self, pixels: np.ndarray, region: Region, face: Face) -> np.ndarray:
        """``align`` from the region's pixels alone (BGR): byte-identical to ``align`` on the whole photo."""
        ...


class ModelPack(Protocol):
    @property
    def info(self) -> PackInfo: ...

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces above the detector's threshold and the minimum size, sorted left to right."""
        ...

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        """The face warped to the recognizer's crop: crop_size x crop_size x 3 BGR."""
        ...

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """One [len(crops), dim] float32 array of L2-normalised embeddings."""
        ...


def unit_rows(raw: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    unit: np.ndarray = (raw / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def check_crops(crops: Sequence[np.ndarray], crop_size: int) -> None:
    for crop in crops:
        if crop.shape != (crop_size, crop_size, 3):
            raise ValueError(f"crop of shape {crop.shape}; the recognizer takes {crop_size}^2 x 3")
