"""Face quality signals for detect-only results: size and sharpness. No I/O."""

from __future__ import annotations

import cv2
import numpy as np

# Sharpness is measured on the face resized to this side, so it does not depend on the photo's resolution.
SHARPNESS_SIDE = 112


def sharpness(image_bgr: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face region: low values (below ~50) mean a blurred face."""
    height, width = image_bgr.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    gray = cv2.cvtColor(image_bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    face = cv2.resize(gray, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(face, cv2.CV_64F).var())
