"""The embed stage handler on real Redis and S3 and a real recognizer: crops of several messages, batched."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

from common.imaging import decode, encode_png
from common.job_bytes import JobBytes
from common.packs import Face, ModelPack, PackInfo
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from common.transient import crop_blob_key
from embedder.stage import EmbedHandler
from schemas.streams import AlignedFace, AlignedMessage, EmbeddedMessage, JobKind
from tests.shared_data import MODEL_ROOT, PACK, require_basic, require_pack


class CountingPack:
    """The real pack, with the size of every forward pass recorded."""

    def __init__(self, pack: ModelPack) -> None:
        self.pack = pack
        self.passes: list[int] = []

    @property
    def info(self) -> PackInfo:
        return self.pack.info

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        return self.pack.detect(image_bgr)

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self.pack.align(image_bgr, face)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        self.passes.append(len(crops))
        return self.pack.embed(crops)


class OnePackLibrary(PackLibrary):
    def __init__(self, settings: ModelSettings, pack: CountingPack) -> None:
        super().__init__(settings)
        self.counting = pack

    def get(self, name: str | None = None) -> ModelPack:
        return self.counting


def test_faces_of_several_messages_are_embedded_batch_by_batch(job_bytes: JobBytes) -> None:
    require_pack()
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT)
    pack = PackLibrary(settings).get()
    store = job_bytes
    photo = decode((require_basic() / "multi_group_t1.jpg").read_bytes(), 100_000_000)
    faces = pack.detect(photo)
    assert len(faces) >= 5
    crops = [pack.align(photo, face) for face in faces[:5]]
    messages = []
    for first, count in ((0, 2), (2, 1), (3, 2)):  # three jobs with 2, 1 and 2 faces
        job_id = uuid.uuid4().hex
        boxes = []
        for index, crop in enumerate(crops[first : first + count]):
            if first == 2:  # an enroll's crop, in S3
                key = f"crops/{job_id}/{index}.png"
                store.store.put(key, encode_png(crop), content_type="image/png")
            else:  # a search's crops, in Redis
                key = crop_blob_key(job_id, index)
                store.transient.put(key, encode_png(crop))
            boxes.append(AlignedFace(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=1.0, crop_key=key))
        messages.append(
            AlignedMessage(
                job_id=job_id,
                kind=JobKind.SEARCH,
                image_key="originals/x",
                faces=boxes,
                faces_seen=count,
                pack=PACK,
                crop_size=pack.info.crop_size,
            )
        )
    counting = CountingPack(pack)
    handler = EmbedHandler(store, OnePackLibrary(settings, counting), batch=2)
    results = handler.handle_batch(messages)
    assert counting.passes == [2, 2, 1]  # five faces, two per forward pass
    one_by_one = pack.embed(crops)
    found = []
    for result in results:
        assert not isinstance(result, BaseException), result
        forward = result.forward
        assert isinstance(forward, EmbeddedMessage) and forward.dim == pack.info.dim
        found.append(np.frombuffer(forward.embeddings, dtype="<f4").reshape(-1, pack.info.dim))
    # Each message gets its own faces' embeddings, in order, the same as one crop at a time.
    assert np.allclose(np.vstack(found), one_by_one, atol=1e-4)
