"""FaceDetector.detect skips insightface's waste (converting the padding, decoding every anchor) and must still give
RetinaFace.detect's numbers exactly: the same boxes, scores and keypoints, array for array, on real photos of
every shape and on images with no face at all."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from common.imaging import decode
from common.packs.insightface_files import load_session
from common.packs.scrfd import FaceDetector
from common.settings import ModelSettings
from tests.shared_data import BASIC, LFW, MODEL_ROOT, require_basic, require_pack

MAX_PIXELS = 100_000_000


def detector(pack: str, **options: float) -> FaceDetector:
    model_file = next(require_pack(pack).glob("det_*.onnx"))
    settings = ModelSettings(model_pack=pack, model_root=MODEL_ROOT, ort_threads=1)
    return FaceDetector(load_session(model_file, settings, "detector"), model_file, **options)  # type: ignore[arg-type]


def photos() -> Iterator[tuple[str, np.ndarray]]:
    require_basic()
    for path in sorted(BASIC.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            image = decode(path.read_bytes(), MAX_PIXELS)
            yield path.name, image
            if max(image.shape[:2]) < 1000:
                yield f"{path.name} x2", cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    folder = LFW / "images"
    if folder.is_dir():
        for path in sorted(folder.iterdir())[::150]:
            image = decode(path.read_bytes(), MAX_PIXELS)
            pad = image.shape[1] // 2
            yield path.name, cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)


def synthetic() -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    for height, width in ((1, 1), (7, 3000), (3000, 7), (640, 640), (641, 639), (480, 853), (1200, 626)):
        yield f"noise {width}x{height}", rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yield "black", np.zeros((300, 500, 3), dtype=np.uint8)


def assert_same(found: FaceDetector, name: str, image: np.ndarray) -> int:
    boxes, keypoints = found._detect(image)
    expected_boxes, expected_keypoints = found._model.detect(image)
    assert boxes.dtype == expected_boxes.dtype and keypoints.dtype == expected_keypoints.dtype, name
    assert np.array_equal(boxes, expected_boxes), name
    assert np.array_equal(keypoints, expected_keypoints), name
    return len(boxes)


@pytest.mark.parametrize("pack", ["buffalo_sc_lite", "mbf128_lite"])
def test_the_same_faces_as_insightface_on_real_photos(pack: str) -> None:
    found = detector(pack)
    faces = sum(assert_same(found, name, image) for name, image in photos())
    assert faces > 40  # the photos do have faces: the comparison covered decoded anchors


def test_the_same_answer_as_insightface_where_there_is_no_face_and_at_other_thresholds() -> None:
    for threshold in (0.5, 0.02):  # 0.02: hundreds of candidates before NMS
        found = detector("buffalo_sc_lite", threshold=threshold)
        for name, image in synthetic():
            assert_same(found, f"{name} at {threshold}", image)


def test_another_input_size_is_laid_out_as_insightface_lays_it_out() -> None:
    found = detector("buffalo_sc_lite", det_size=320)
    assert (found._input_width, found._input_height) == (320, 320)
    for name, image in list(photos())[:6]:
        assert_same(found, name, image)


def test_detect_returns_the_faces_left_to_right_without_the_small_ones() -> None:
    found = detector("buffalo_sc_lite", min_face_size=60)
    image = decode((require_basic() / "multi_obama_and_biden.jpg").read_bytes(), MAX_PIXELS)
    faces = found.detect(image)
    boxes, _ = found._model.detect(image)
    wide_enough = [b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= 60]
    assert len(faces) == len(wide_enough) >= 2
    assert [f.box[0] for f in faces] == sorted(float(b[0]) for b in wide_enough)
