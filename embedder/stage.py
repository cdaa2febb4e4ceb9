"""The embed stage: crops of several messages go through their pack's recognizer in one batch per pack."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from common.errors import PoisonMessage, TransientError
from common.handlers import HandlerResult, Outcome
from common.objects import ObjectMissing, ObjectStore
from common.packs import ModelPack
from common.packs.library import PackLibrary, pack_for
from schemas.jobs import ErrorCode
from schemas.streams import AlignedMessage, EmbeddedMessage, Stage, encode_embeddings


class EmbedHandler:
    stage = Stage.EMBED
    message_type = AlignedMessage

    def __init__(self, store: ObjectStore, packs: PackLibrary, batch: int = 8) -> None:
        self.store = store
        self.packs = packs
        self.batch = batch

    def _crops(self, message: AlignedMessage) -> list[np.ndarray]:
        crops = []
        for face in message.faces:
            try:
                data = self.store.get(face.crop_key)
            except ObjectMissing as exc:
                raise TransientError(f"crop {face.crop_key} is missing") from exc
            crop = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if crop is None:
                raise PoisonMessage(ErrorCode.UNDECODABLE_IMAGE, f"crop {face.crop_key} is not an image")
            crops.append(crop)
        return crops

    def handle_batch(self, messages: Sequence[AlignedMessage]) -> list[HandlerResult]:
        results: list[HandlerResult | None] = [None] * len(messages)
        batches: dict[str, tuple[ModelPack, list[np.ndarray], list[tuple[int, int, int]]]] = {}
        for index, message in enumerate(messages):
            try:
                pack = pack_for(self.packs, message.pack)
                crops = self._crops(message)
            except Exception as exc:
                results[index] = exc
                continue
            _, batch, spans = batches.setdefault(pack.info.name, (pack, [], []))
            spans.append((index, len(batch), len(crops)))  # message index, first crop, crop count
            batch.extend(crops)
        for pack, batch, spans in batches.values():
            try:
                # The faces of every message of this pack, ``self.batch`` per forward pass.
                vectors = np.vstack([pack.embed(batch[i : i + self.batch]) for i in range(0, len(batch), self.batch)])
            except Exception as exc:
                for index, _, _ in spans:
                    results[index] = exc
                continue
            for index, first, count in spans:
                forward = messages[index].advance(
                    EmbeddedMessage,
                    embeddings=encode_embeddings(vectors[first : first + count]),
                    dim=pack.info.dim,
                    pack=pack.info.name,
                )
                results[index] = Outcome(forward=forward)
        return [result if result is not None else RuntimeError("message left unhandled") for result in results]
