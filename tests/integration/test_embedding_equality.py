"""The pipeline's stage handlers give the same embeddings as a plain insightface loop over the same pack
(FaceAnalysis.get: detect on the full decode, norm_crop, embed): whatever the stages do to save time (reduced
decodes, crop codecs, transient storage), every face's embedding stays within cosine 0.999 of the loop's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from common.handlers import Outcome
from common.imaging import decode
from common.job_bytes import JobBytes
from common.packs import ModelPack
from common.packs.alignment import align_face
from common.packs.library import PackLibrary
from common.settings import ModelSettings
from common.transient import photo_blob_key
from detector.stages import AlignHandler, DetectHandler
from embedder.stage import EmbedHandler
from schemas.streams import AlignedMessage, DetectedMessage, EmbeddedMessage, JobKind, JobMessage
from tests.shared_data import LFW, MODEL_ROOT, PACK, iou, require_basic, require_pack

MAX_PIXELS = 100_000_000
MIN_COSINE = 0.999
# Tight LFW crops must be padded or SCRFD finds no face in them (as in `fecapass calibrate`).
LFW_PAD_FRACTION = 0.5
LFW_PHOTOS = 40  # every 37th of the 1493 photos: enough variety, a few seconds


@pytest.fixture(scope="module")
def pack() -> ModelPack:
    require_pack()
    return PackLibrary(ModelSettings(model_pack=PACK, model_root=MODEL_ROOT)).get()


def basic_photos() -> Iterator[tuple[str, bytes]]:
    for path in sorted(require_basic().iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            yield path.name, path.read_bytes()


def lfw_photos() -> Iterator[tuple[str, bytes]]:
    folder = LFW / "images"
    if not folder.is_dir():
        pytest.skip(f"LFW photos not found at {folder} (../shared is not beside this checkout)")
    paths = sorted(folder.iterdir())
    for path in paths[:: max(1, len(paths) // LFW_PHOTOS)]:
        image = decode(path.read_bytes(), MAX_PIXELS)
        pad = int(image.shape[1] * LFW_PAD_FRACTION)
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
        ok, encoded = cv2.imencode(".jpg", padded, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        yield path.name, encoded.tobytes()


def plain_loop(pack: ModelPack, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, embedding) per face, the way FaceAnalysis.get makes them: every pixel, the detector's keypoints
    as they come, insightface's norm_crop, the recognizer."""
    image = decode(data, MAX_PIXELS)
    faces = pack.detect(image)
    crops = [align_face(image, face.keypoints, pack.info.crop_size) for face in faces]
    return list(zip([face.box for face in faces], pack.embed(crops), strict=True)) if crops else []


def through_stages(store: JobBytes, packs: PackLibrary, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box, embedding) per face from the detect, align and embed handlers, each message through its wire
    format as the runner would carry it."""
    job_id = uuid.uuid4().hex
    key = photo_blob_key(job_id)  # a search's photo, where the API puts it
    store.transient.put(key, data)
    message = JobMessage(job_id=job_id, kind=JobKind.SEARCH, image_key=key, pack=PACK)
    detected = DetectHandler(store, packs, MAX_PIXELS).handle(message)
    assert isinstance(detected, Outcome) and detected.forward is not None
    aligned = AlignHandler(store, packs, MAX_PIXELS).handle(DetectedMessage.from_fields(detected.forward.to_fields()))
    assert aligned.forward is not None
    [embedded] = EmbedHandler(store, packs).handle_batch([AlignedMessage.from_fields(aligned.forward.to_fields())])
    assert isinstance(embedded, Outcome) and embedded.forward is not None
    result = EmbeddedMessage.from_fields(embedded.forward.to_fields())
    boxes = [np.asarray(face.box, dtype=np.float32) for face in result.faces]
    return list(zip(boxes, result.embedding_matrix(), strict=True))


def compare(pack: ModelPack, store: JobBytes, photos: Iterator[tuple[str, bytes]]) -> None:
    packs = PackLibrary(ModelSettings(model_pack=PACK, model_root=MODEL_ROOT))
    worst: list[str] = []
    faces = 0
    for name, data in photos:
        expected = plain_loop(pack, data)
        if not expected:
            continue
        found = through_stages(store, packs, data)
        for box, vector in expected:
            # The same face: the stages' box overlapping the loop's most (boxes may move by a pixel or two).
            overlaps = [iou(tuple(box), tuple(other)) for other, _ in found]
            best = int(np.argmax(overlaps))
            assert overlaps[best] > 0.8, f"{name}: face at {box.round(1)} not found by the stages"
            cosine = float(np.dot(vector, found[best][1]))
            faces += 1
            if cosine < MIN_COSINE:
                side = float(min(box[2] - box[0], box[3] - box[1]))
                worst.append(f"{name} face {box.round(0)} (shorter side {side:.0f} px): cosine {cosine:.4f}")
        assert len(found) == len(expected), (
            f"{name}: {len(found)} faces through the stages, {len(expected)} in the loop"
        )
    assert faces > 0
    assert not worst, "embeddings differ from the plain loop's:\n" + "\n".join(worst)


def test_basic_photos_embed_as_in_the_plain_loop(pack: ModelPack, job_bytes: JobBytes) -> None:
    compare(pack, job_bytes, basic_photos())


def test_padded_lfw_photos_embed_as_in_the_plain_loop(pack: ModelPack, job_bytes: JobBytes) -> None:
    compare(pack, job_bytes, lfw_photos())


def test_photos_of_large_faces_embed_as_in_the_plain_loop(pack: ModelPack, job_bytes: JobBytes) -> None:
    """The basic photos upscaled 2x: faces of 300 to 900 px, where reduced decodes matter most."""

    def upscaled() -> Iterator[tuple[str, bytes]]:
        for name, data in basic_photos():
            image = decode(data, MAX_PIXELS)
            if max(image.shape[:2]) > 1000:
                continue  # already large; keeps the test quick
            larger = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            ok, encoded = cv2.imencode(".jpg", larger, [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok
            yield f"{name} x2", encoded.tobytes()

    compare(pack, job_bytes, upscaled())
