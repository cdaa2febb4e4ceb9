"""The ArcFace-style ONNX recognizer: ``embed(crops) -> ndarray``, batched, L2-normalised float32. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from insightface.model_zoo.arcface_onnx import ArcFaceONNX

from common.packs.base import check_crops, unit_rows


class FaceRecognizer:
    def __init__(self, session: onnxruntime.InferenceSession, model_file: Path) -> None:
        self._model = ArcFaceONNX(model_file=str(model_file), session=session)
        self.crop_size = int(self._model.input_size[0])
        output_dim = self._model.output_shape[1]
        # Some exports leave the output dimension symbolic; one forward pass tells.
        self.dim = int(output_dim) if isinstance(output_dim, int) else self._probe_dim()

    def _probe_dim(self) -> int:
        blank = np.zeros((self.crop_size, self.crop_size, 3), dtype=np.uint8)
        features: np.ndarray = self._model.get_feat([blank])
        return int(features.shape[1])

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """One forward pass over all crops (each crop_size x crop_size BGR) -> [N, dim] unit vectors."""
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        check_crops(crops, self.crop_size)
        return unit_rows(np.asarray(self._model.get_feat(list(crops)), dtype=np.float32))
