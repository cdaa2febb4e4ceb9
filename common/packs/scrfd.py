"""The SCRFD/RetinaFace detector: ``detect(image) -> list[Face]``. No I/O; the session is built by the caller.

insightface's ``RetinaFace`` loads the model and knows its outputs; ``FaceDetector`` then runs the steps of
``RetinaFace.detect`` to the same numbers (tests/unit/test_scrfd.py compares them array for array), with two pieces
of waste left out, about 2 of its ~5 ms a photo outside the network (BENCHMARKS.md):

* insightface pads the resized photo to the square input and converts all of it to the network's float layout;
  here only the photo's part is converted, into an input whose padding already holds what converted black is;
* insightface decodes a box and five keypoints at every anchor (33,600 at 640 x 640) and keeps those whose score
  passes the threshold; here only those are decoded, with the same arithmetic.

The network's input (4.9 MB at 640 x 640) is one buffer a thread, reused: a new one a photo cost more in page faults
than its conversion (BENCHMARKS.md, profile).
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
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
        model = self._model
        # The input's width and height: det_size, or what the model file fixes (prepare keeps that one).
        self._input_width, self._input_height = model.input_size
        self._scale, self._mean = 1.0 / model.input_std, (model.input_mean,) * 3
        # What blobFromImage makes of a black pixel: insightface's padding, as the network sees it.
        self._padding = float(self._blob(np.zeros((1, 1, 3), dtype=np.uint8))[0, 0, 0, 0])
        self._centres: dict[int, np.ndarray] = {}  # by stride
        self._inputs = threading.local()  # a thread's input buffer and the part of it the last photo filled

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces above threshold and minimum size, sorted left to right."""
        boxes, keypoints = self._detect(image_bgr)
        faces = [
            Face(box=box[:4].astype(np.float32), keypoints=kps.astype(np.float32), score=float(box[4]))
            for box, kps in zip(boxes, keypoints, strict=True)
        ]
        return kept_faces(faces, self.min_face_size)

    def _blob(self, image_bgr: np.ndarray) -> np.ndarray:
        height, width = image_bgr.shape[:2]
        blob: np.ndarray = cv2.dnn.blobFromImage(image_bgr, self._scale, (width, height), self._mean, swapRB=True)
        return blob

    def _detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``RetinaFace.detect(image_bgr)`` (max_num 0): boxes with their scores (N x 5) and keypoints (N x 5 x 2)."""
        model, width, height = self._model, self._input_width, self._input_height
        # The fit into the input, as RetinaFace.detect computes it.
        ratio = float(image_bgr.shape[0]) / image_bgr.shape[1]
        if ratio > float(height) / width:
            new_height, new_width = height, int(height / ratio)
        else:
            new_width, new_height = width, int(width * ratio)
        det_scale = float(new_height) / image_bgr.shape[0]
        blob = self._input(self._blob(cv2.resize(image_bgr, (new_width, new_height))))
        outputs = model.session.run(model.output_names, {model.input_name: blob})
        scores_list, boxes_list, kps_list = [], [], []
        levels = model.fmc
        for level, stride in enumerate(model._feat_stride_fpn):
            scores = outputs[level]
            kept = np.where(scores >= model.det_thresh)[0]
            centres = self._anchor_centres(stride)[kept]
            distances = outputs[level + levels][kept] * stride
            boxes = np.stack(
                [
                    centres[:, 0] - distances[:, 0],
                    centres[:, 1] - distances[:, 1],
                    centres[:, 0] + distances[:, 2],
                    centres[:, 1] + distances[:, 3],
                ],
                axis=-1,
            )
            offsets = outputs[level + 2 * levels][kept] * stride
            points = np.stack([centres[:, i % 2] + offsets[:, i] for i in range(offsets.shape[1])], axis=-1)
            scores_list.append(scores[kept])
            boxes_list.append(boxes)
            kps_list.append(points.reshape(len(kept), offsets.shape[1] // 2, 2))
        scores = np.vstack(scores_list)
        order = scores.ravel().argsort()[::-1]
        detections = np.hstack((np.vstack(boxes_list) / det_scale, scores)).astype(np.float32, copy=False)[order, :]
        keypoints = (np.vstack(kps_list) / det_scale)[order, :, :]
        keep = model.nms(detections)
        return detections[keep, :], keypoints[keep, :, :]

    def _input(self, part: np.ndarray) -> np.ndarray:
        """The network's input: ``part`` (1 x 3 x h x w) top left, padding around it, in this thread's buffer. Of
        the last photo's part, what this one does not cover goes back to padding."""
        inputs, (height, width) = self._inputs, part.shape[2:]
        blob: np.ndarray | None = getattr(inputs, "blob", None)
        if blob is None:
            blob = np.full((1, 3, self._input_height, self._input_width), self._padding, dtype=np.float32)
            inputs.blob, inputs.filled = blob, (0, 0)
        filled_height, filled_width = inputs.filled
        blob[:, :, height:filled_height, :filled_width] = self._padding
        blob[:, :, : min(height, filled_height), width:filled_width] = self._padding
        blob[:, :, :height, :width] = part
        inputs.filled = (height, width)
        return blob

    def _anchor_centres(self, stride: int) -> np.ndarray:
        """Each anchor's centre at ``stride`` over the input, as RetinaFace.forward lays them out."""
        if stride not in self._centres:
            rows, columns = self._input_height // stride, self._input_width // stride
            columns_grid, rows_grid = np.meshgrid(np.arange(columns), np.arange(rows))  # np.mgrid[...][::-1]
            centres = np.stack([columns_grid, rows_grid], axis=-1).astype(np.float32)
            centres = (centres * stride).reshape((-1, 2))
            anchors = self._model._num_anchors
            if anchors > 1:
                centres = np.stack([centres] * anchors, axis=1).reshape((-1, 2))
            self._centres[stride] = centres
        return self._centres[stride]
