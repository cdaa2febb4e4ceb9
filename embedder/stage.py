"""The embed stage: crops of several messages go through the recognizer in one batch."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from common.errors import PoisonMessage, TransientError
from common.handlers import HandlerResult, Outcome
from common.objects import ObjectMissing, ObjectStore
from embedder.model import FaceRecognizer
from schemas.jobs import ErrorCode
from schemas.streams import PipelineMessage, Stage, encode_embeddings


class EmbedHandler:
    stage = Stage.EMBED
    message_type = PipelineMessage

    def __init__(self, store: ObjectStore, recognizer: FaceRecognizer, pack: str) -> None:
        self.store = store
        self.recognizer = recognizer
        self.pack = pack

    def _crops(self, message: PipelineMessage) -> list[np.ndarray]:
        crops = []
        for face in message.require_faces():
            if face.crop_key is None:
                raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "face without crop_key reached embed")
            try:
                data = self.store.get(face.crop_key)
            except ObjectMissing as exc:
                raise TransientError(f"crop {face.crop_key} is missing") from exc
            crop = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if crop is None:
                raise PoisonMessage(ErrorCode.UNDECODABLE_IMAGE, f"crop {face.crop_key} is not an image")
            crops.append(crop)
        return crops

    def handle_batch(self, messages: Sequence[PipelineMessage]) -> list[HandlerResult]:
        results: list[HandlerResult | None] = [None] * len(messages)
        batch: list[np.ndarray] = []
        spans: list[tuple[int, int, int]] = []  # message index, first crop, crop count
        for index, message in enumerate(messages):
            try:
                crops = self._crops(message)
            except Exception as exc:
                results[index] = exc
                continue
            spans.append((index, len(batch), len(crops)))
            batch.extend(crops)
        vectors = self.recognizer.embed(batch)  # one forward pass for every face of every message
        for index, first, count in spans:
            forward = messages[index].model_copy(
                update={
                    "embeddings": encode_embeddings(vectors[first : first + count]),
                    "dim": self.recognizer.dim,
                    "pack": self.pack,
                }
            )
            results[index] = Outcome(forward=forward)
        return [result if result is not None else RuntimeError("message left unhandled") for result in results]
