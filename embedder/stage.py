"""The embed stage: crops of several messages go through their pack's recognizer in one batch per pack."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.handlers import HandlerResult, Outcome
from common.job_bytes import JobBytes, crop_pixels
from common.packs import ModelPack
from common.packs.library import PackLibrary, pack_for
from schemas.streams import AlignedMessage, EmbeddedMessage, Stage, encode_embeddings


class EmbedHandler:
    stage = Stage.EMBED
    message_type = AlignedMessage

    def __init__(self, objects: JobBytes, packs: PackLibrary, batch: int = 1) -> None:
        self.objects = objects
        self.packs = packs
        self.batch = batch

    def _crops(self, message: AlignedMessage, data: dict[str, bytes]) -> list[np.ndarray]:
        # Raised here, a crop that is neither raw nor PNG fails its own message only, not the pack's whole batch.
        return [crop_pixels(data[face.crop_key], message.crop_size, face.crop_key) for face in message.faces]

    def _fetch(self, messages: Sequence[AlignedMessage]) -> list[dict[str, bytes] | Exception]:
        """Every crop of the batch in one read where they are blobs; should that fail, message by message, so that one
        message's expired crop fails only its own job."""
        try:
            keys = [face.crop_key for message in messages for face in message.faces]
            everything = dict(zip(keys, self.objects.get_crops(keys), strict=True))
            return [{face.crop_key: everything[face.crop_key] for face in m.faces} for m in messages]
        except Exception:  # found again below, and kept as each message's own error
            pass
        results: list[dict[str, bytes] | Exception] = []
        for message in messages:
            keys = [face.crop_key for face in message.faces]
            try:
                results.append(dict(zip(keys, self.objects.get_crops(keys), strict=True)))
            except Exception as exc:
                results.append(exc)
        return results

    def handle_batch(self, messages: Sequence[AlignedMessage]) -> list[HandlerResult]:
        results: list[HandlerResult | None] = [None] * len(messages)
        batches: dict[str, tuple[ModelPack, list[np.ndarray], list[tuple[int, int, int]]]] = {}
        fetched = self._fetch(messages)
        for index, message in enumerate(messages):
            try:
                pack = pack_for(self.packs, message.pack)
                found = fetched[index]
                if isinstance(found, Exception):
                    raise found
                crops = self._crops(message, found)
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
