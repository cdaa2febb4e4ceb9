"""5-point similarity alignment to the recognizer's crop (ArcFace template, insightface ``norm_crop``)."""

from __future__ import annotations

import warnings

import numpy as np
from insightface.utils import face_align

# insightface 0.7.3 calls a scikit-image API deprecated in 0.26; harmless and noisy on every face.
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")


def align_face(image_bgr: np.ndarray, keypoints: np.ndarray, crop_size: int = 112) -> np.ndarray:
    """Warp the face so its eyes, nose and mouth land on the ArcFace template; returns crop_size^2 BGR."""
    if keypoints.shape != (5, 2):
        raise ValueError(f"expected 5x2 keypoints, got {keypoints.shape}")
    if crop_size % 112 != 0 and crop_size % 128 != 0:
        raise ValueError("crop size must be a multiple of 112 or 128")
    return np.asarray(face_align.norm_crop(image_bgr, landmark=keypoints, image_size=crop_size))


def similarity_transform(keypoints: np.ndarray, crop_size: int = 112) -> np.ndarray:
    """The 2x3 matrix ``align_face`` applies (exposed for tests and debugging)."""
    return np.asarray(face_align.estimate_norm(keypoints, image_size=crop_size))


def fast_similarity_transform(keypoints: np.ndarray, crop_size: int = 112) -> np.ndarray:
    """``similarity_transform`` by Umeyama's closed form, as scikit-image estimates it, equal to float rounding and
    some 20 times cheaper: for the bounds of what a warp reads (common/packs/regions.py), never for the warp."""
    if crop_size % 112 == 0:
        target = face_align.arcface_dst * (crop_size / 112.0)
    else:
        target = face_align.arcface_dst * (crop_size / 128.0) + (8.0 * crop_size / 128.0, 0.0)
    source = np.asarray(keypoints, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    centred = source - source_mean
    covariance = (target - target_mean).T @ centred / len(source)
    signs = np.array([1.0, -1.0 if np.linalg.det(covariance) < 0 else 1.0])
    left, singular, right = np.linalg.svd(covariance)
    rotation = left @ np.diag(signs) @ right
    scale = float(singular @ signs) / float(centred.var(axis=0).sum())
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])
