"""An aligner warping only its face's region of the photo (what the detect stage sends the align stage) makes the
byte-identical crop it makes from the whole photo: for every pack under ../shared/models and for dlib, for small,
large and huge faces, rotated ones, faces cut by every edge of the photo and faces partly outside it."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest

from common.packs.alignment import fast_similarity_transform, similarity_transform
from common.packs.base import Aligner, Face, ModelPackError
from common.packs.insightface_files import is_pack_folder
from common.packs.library import PackLibrary, pack_names
from common.packs.regions import SAMPLING_MARGIN, Region, covering, on_canvas
from common.settings import ModelSettings
from tests.shared_data import MODEL_ROOT

warnings.filterwarnings("ignore", category=FutureWarning)

HEIGHT, WIDTH = 1200, 1600
# The ArcFace template's five points (eyes, nose, mouth corners) of a 112 px crop.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def photo() -> np.ndarray:
    """Texture at every scale (noise blurred a little, plus gradients), so that any pixel the warp reads matters."""
    rng = np.random.default_rng(7)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), (3, 3), 1)
    ramp = (np.add.outer(np.arange(HEIGHT), np.arange(WIDTH)) % 256).astype(np.uint8)
    return cv2.addWeighted(noise, 0.7, np.dstack([ramp, ramp[::-1], ramp[:, ::-1]]), 0.3, 0)


def face_at(cx: float, cy: float, side: float, angle: float, rng: np.random.Generator) -> Face:
    points = (TEMPLATE - TEMPLATE.mean(0)) / 112 * side
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    keypoints = points @ turn.T + (cx, cy) + rng.normal(0, 1.5, (5, 2))
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)
    # Rounded as the wire carries them (the align stage warps from the entry's keypoints).
    return Face(box=box, keypoints=np.round(keypoints, 2).astype(np.float32), score=0.9)


def faces() -> list[tuple[str, Face]]:
    rng = np.random.default_rng(11)
    placed = [
        ("small, inside", face_at(400, 300, 40, 0.1, rng)),
        ("large, inside", face_at(800, 600, 700, -0.2, rng)),
        ("larger than the photo", face_at(800, 600, 2400, 0.3, rng)),
        ("cut by the left edge", face_at(30, 500, 300, 0.0, rng)),
        ("cut by the top edge", face_at(700, 10, 260, 0.5, rng)),
        ("cut by the right edge", face_at(WIDTH - 20, 700, 500, -0.4, rng)),
        ("cut by the bottom edge", face_at(900, HEIGHT - 5, 420, 1.2, rng)),
        ("in the bottom right corner", face_at(WIDTH - 40, HEIGHT - 30, 900, 2.5, rng)),
        ("in the top left corner, upside down", face_at(15, 25, 180, math.pi, rng)),
        ("mostly outside the photo", face_at(-150, 200, 320, 0.2, rng)),
    ]
    for index in range(40):  # and anywhere else, at any size and turn
        side = float(rng.uniform(24, 1500))
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        placed.append((f"random {index}", face_at(cx, cy, side, float(rng.uniform(-math.pi, math.pi)), rng)))
    return placed


def aligners() -> list[tuple[str, Aligner]]:
    library = PackLibrary(ModelSettings(model_root=MODEL_ROOT))
    found: list[tuple[str, Aligner]] = []
    for name in pack_names(library.settings):
        if name == "dlib":
            pytest.importorskip("dlib", reason="the dlib pack needs the dlib package")
        elif not is_pack_folder(MODEL_ROOT / "models" / name):
            continue
        try:
            found.append((name, library.aligner(name, None)))
        except ModelPackError:
            continue  # a folder of other files (../shared/models/_sources)
    if len(found) == 1:
        pytest.skip(f"no insightface pack under {MODEL_ROOT / 'models'} (../shared is not beside this checkout)")
    return found


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo()


def test_every_pack_crops_the_same_bytes_from_the_region_as_from_the_photo(image: np.ndarray) -> None:
    checked = 0
    for pack, aligner in aligners():
        for where, face in faces():
            region = aligner.region(face, image.shape[:2])
            pixels = region.of(image).tobytes()  # as the detect stage sends it: raw, row by row
            received = np.frombuffer(pixels, dtype=np.uint8).reshape(region.height, region.width, 3)
            expected = aligner.align(image, face)
            assert expected.any(), f"{pack}, {where}: the crop is blank, the case tests nothing"
            assert np.array_equal(aligner.align_region(received, region, face), expected), f"{pack}, {where}"
            checked += 1
    assert checked >= 100


def test_the_region_is_what_the_warp_reads_not_the_photo(image: np.ndarray) -> None:
    """A large face inside the photo sends a fraction of it, and pixels outside the region do not reach the crop."""
    for pack, aligner in aligners():
        face = face_at(800, 600, 300, 0.2, np.random.default_rng(3))
        region = aligner.region(face, image.shape[:2])
        assert 0 < region.width * region.height < image.shape[0] * image.shape[1] / 4, pack
        scrambled = image.copy()
        scrambled[:, : region.x1] = 255 - scrambled[:, : region.x1]
        scrambled[: region.y1] = 255 - scrambled[: region.y1]
        scrambled[:, region.x2 :] = 0
        scrambled[region.y2 :] = 0
        assert np.array_equal(aligner.align(scrambled, face), aligner.align(image, face)), pack


def test_a_region_is_clipped_to_the_photo_and_never_inverted() -> None:
    points = np.array([[-50.0, -20.0], [30.5, 40.2]])
    assert covering(points, (100, 200), 2) == Region(0, 0, 34, 44)
    outside = np.array([[500.0, 500.0], [600.0, 700.0]])
    clipped = covering(outside, (100, 200), 2)
    assert (clipped.width, clipped.height) == (0, 0)
    canvas = on_canvas(np.zeros((0, 0, 3), dtype=np.uint8), clipped)
    assert canvas.shape[:2] == (100, 200)
    with pytest.raises(ValueError, match="region pixels"):
        on_canvas(np.zeros((3, 3, 3), dtype=np.uint8), Region(0, 0, 4, 4))


def test_the_fast_similarity_estimate_is_the_aligners_to_a_hundredth_of_a_pixel() -> None:
    """The region's bounds come from a closed-form estimate; two pixels of margin cover any difference from the
    transform the warp uses, and the difference is far smaller (mirrored faces included)."""
    rng = np.random.default_rng(5)
    for index in range(300):
        keypoints = (TEMPLATE * rng.uniform(0.2, 40) + rng.uniform(-100, 8000, 2) + rng.normal(0, 5, (5, 2))).astype(
            np.float32
        )
        if index % 2:
            keypoints = np.ascontiguousarray(keypoints[:, ::-1])
        for size in (112, 128, 224):
            last = size - 1
            corners = np.array([[0, 0, 1], [last, 0, 1], [0, last, 1], [last, last, 1]], dtype=np.float64)
            exact = corners @ cv2.invertAffineTransform(similarity_transform(keypoints, size)).T
            fast = corners @ cv2.invertAffineTransform(fast_similarity_transform(keypoints, size)).T
            assert np.abs(exact - fast).max() < 0.01 < SAMPLING_MARGIN
