"""The embed stage handler on real Redis and S3 and a real recognizer: crops of several messages, batched; crops as
the align stage stores them (raw pixels in Redis, a PNG in S3) and as it stored them before (a PNG in Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

from common.imaging import PNG_SIGNATURE, decode, encode_png
from common.job_bytes import JobBytes, crop_blob
from common.packs import Face, ModelPack, PackInfo
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from common.transient import crop_blob_key, job_blob_keys, photo_blob_key
from detector.stages import AlignHandler, DetectHandler, from_wire
from embedder.stage import EmbedHandler
from schemas.streams import AlignedFace, AlignedMessage, DetectedMessage, EmbeddedMessage, JobKind, JobMessage
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
            else:  # a search's crops, in Redis: raw pixels, and the first job's a PNG as written before raw crops
                key = crop_blob_key(job_id, index)
                store.transient.put(key, encode_png(crop) if first == 0 else crop_blob(crop))
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


def embedded(result: object, dim: int) -> np.ndarray:
    assert not isinstance(result, BaseException), result
    forward = getattr(result, "forward", None)
    assert isinstance(forward, EmbeddedMessage)
    return np.frombuffer(forward.embeddings, dtype="<f4").reshape(-1, dim)


def test_the_align_stages_raw_crops_embed_as_the_crops_themselves(job_bytes: JobBytes) -> None:
    """Detect, align and embed on a search: the blobs between align and embed are the crops' raw pixels, and the
    embeddings are those of the aligner's crops, exactly (raw is as lossless as PNG)."""
    require_pack()
    packs = PackLibrary(ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_threads=1))
    pack = packs.get()
    photo = (require_basic() / "multi_two_people.jpg").read_bytes()
    job_id = uuid.uuid4().hex
    job_bytes.transient.put(photo_blob_key(job_id), photo)
    message = JobMessage(job_id=job_id, kind=JobKind.SEARCH, image_key=photo_blob_key(job_id), pack=PACK)
    detected = DetectHandler(job_bytes, packs, 100_000_000).handle(message).forward
    assert isinstance(detected, DetectedMessage)
    aligned = AlignHandler(job_bytes, packs, 100_000_000).handle(detected).forward
    assert isinstance(aligned, AlignedMessage) and len(aligned.faces) >= 2
    size = aligned.crop_size
    blobs = [job_bytes.transient.get(face.crop_key) for face in aligned.faces]
    assert all(len(blob) == size * size * 3 and not blob.startswith(PNG_SIGNATURE) for blob in blobs)
    aligner = packs.aligner(PACK, size)
    image = decode(photo, 100_000_000)
    expected = [aligner.align(image, from_wire(face)) for face in aligned.faces]
    assert blobs == [crop.tobytes() for crop in expected]
    [result] = EmbedHandler(job_bytes, packs).handle_batch([AlignedMessage.from_fields(aligned.to_fields())])
    # One face per forward pass, as the handler runs them (a larger batch may round differently).
    assert np.array_equal(embedded(result, pack.info.dim), np.vstack([pack.embed([crop]) for crop in expected]))
    job_bytes.transient.delete(job_blob_keys(job_id, crops=len(aligned.faces)))


def test_a_crop_whose_pixels_spell_the_png_signature_is_stored_as_a_png_and_embeds_the_same(
    job_bytes: JobBytes,
) -> None:
    require_pack()
    settings = ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_threads=1)
    packs = PackLibrary(settings)
    pack = packs.get()
    photo = decode((require_basic() / "obama_1.jpg").read_bytes(), 100_000_000)
    crop = pack.align(photo, max(pack.detect(photo), key=lambda face: face.area)).copy()
    crop.reshape(-1)[: len(PNG_SIGNATURE)] = np.frombuffer(PNG_SIGNATURE, dtype=np.uint8)  # the top-left pixels
    job_id = uuid.uuid4().hex
    search = JobMessage(job_id=job_id, kind=JobKind.SEARCH, image_key=photo_blob_key(job_id), pack=PACK)
    key = job_bytes.put_crop(search, 0, crop)
    stored = job_bytes.transient.get(key)
    assert stored.startswith(PNG_SIGNATURE) and stored == encode_png(crop)  # not the raw bytes: those start alike
    face = AlignedFace(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=1.0, crop_key=key)
    message = AlignedMessage(
        job_id=job_id, kind=JobKind.SEARCH, image_key=search.image_key, faces=[face], faces_seen=1, pack=PACK,
        crop_size=pack.info.crop_size,
    )  # fmt: skip
    [result] = EmbedHandler(job_bytes, packs).handle_batch([message])
    assert np.array_equal(embedded(result, pack.info.dim), pack.embed([crop]))
    job_bytes.transient.delete([key])
