"""What Redis holds of a crop: its raw BGR pixels, told apart from a PNG (S3's, or a blob written before raw crops)
by PNG's signature; a crop whose first pixels spell that signature is stored as a PNG; anything else is poison."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.errors import PoisonMessage
from common.imaging import PNG_SIGNATURE, encode_png
from common.job_bytes import UndecodableCrop, crop_blob, crop_pixels, crop_png
from common.packs.regions import raw_bytes, raw_pixels
from schemas.jobs import ErrorCode

SIZE = 112


def crop(seed: int = 3, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def spelling_the_signature() -> np.ndarray:
    """A crop whose first 8 bytes, read raw (B, G, R of the first pixel, then the next ones), are PNG's signature."""
    pixels = crop()
    pixels.reshape(-1)[: len(PNG_SIGNATURE)] = np.frombuffer(PNG_SIGNATURE, dtype=np.uint8)
    return pixels


def test_a_crop_is_stored_as_its_raw_pixels_and_read_back_unchanged() -> None:
    pixels = crop()
    blob = crop_blob(pixels)
    assert blob == pixels.tobytes() and len(blob) == SIZE * SIZE * 3 and not blob.startswith(PNG_SIGNATURE)
    read = crop_pixels(blob, SIZE, "k")
    assert read.shape == (SIZE, SIZE, 3) and read.dtype == np.uint8 and np.array_equal(read, pixels)


def test_a_view_of_a_larger_array_is_stored_in_c_order() -> None:
    photo = crop(size=300)
    view = photo[10 : 10 + SIZE, 20 : 20 + SIZE]
    assert np.array_equal(crop_pixels(crop_blob(view), SIZE, "k"), view)


def test_a_png_crop_is_still_read_as_older_blobs_and_s3_objects_hold_it() -> None:
    pixels = crop()
    assert np.array_equal(crop_pixels(encode_png(pixels), SIZE, "k"), pixels)


def test_raw_pixels_that_begin_with_the_png_signature_are_stored_as_a_png() -> None:
    pixels = spelling_the_signature()
    assert raw_bytes(pixels).startswith(PNG_SIGNATURE)  # stored raw, a reader would take them for a PNG
    blob = crop_blob(pixels)
    decoded = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and np.array_equal(decoded, pixels)  # a real PNG, lossless
    assert np.array_equal(crop_pixels(blob, SIZE, "k"), pixels)
    assert crop_png(blob, SIZE, "k") == blob


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image at all", id="a few bytes"),
        pytest.param(crop().tobytes()[:-1], id="one byte short"),
        pytest.param(crop().tobytes() + b"\0", id="one byte over"),
        pytest.param(crop(size=SIZE * 2).tobytes(), id="another size's raw pixels"),
    ],
)
def test_bytes_of_the_wrong_length_that_are_no_png_are_poison(data: bytes) -> None:
    with pytest.raises(PoisonMessage) as raised:
        crop_pixels(data, SIZE, "fecapass:blob:j:crop.0")
    assert raised.value.code is ErrorCode.UNDECODABLE_IMAGE and "fecapass:blob:j:crop.0" in raised.value.message
    with pytest.raises(UndecodableCrop):
        crop_png(data, SIZE, "k")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PNG_SIGNATURE + b"\0" * 100, id="a broken PNG"),
        pytest.param(encode_png(crop(size=SIZE * 2)), id="a PNG of another size"),
    ],
)
def test_a_png_that_is_no_crop_of_the_size_is_poison(data: bytes) -> None:
    with pytest.raises(UndecodableCrop) as raised:
        crop_pixels(data, SIZE, "k")
    assert raised.value.code is ErrorCode.UNDECODABLE_IMAGE


def test_a_crop_size_of_zero_reads_nothing() -> None:
    with pytest.raises(UndecodableCrop):
        crop_pixels(b"", 0, "k")


def test_s3_gets_a_png_of_a_raw_blob_and_a_png_blob_as_it_is() -> None:
    pixels = crop()
    png = crop_png(crop_blob(pixels), SIZE, "k")
    assert png.startswith(PNG_SIGNATURE)
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR), pixels)
    old = encode_png(pixels)
    assert crop_png(old, SIZE, "k") is old


def test_raw_pixels_need_three_channels_of_bytes_and_the_exact_length() -> None:
    with pytest.raises(ValueError):
        raw_bytes(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        raw_bytes(np.zeros((4, 4, 3), dtype=np.float32))
    assert raw_pixels(bytes(4 * 5 * 3), 4, 5) is not None and raw_pixels(bytes(59), 4, 5) is None
    assert raw_pixels(bytes(0), -1, 0) is None
