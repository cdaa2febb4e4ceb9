"""The bench's enroll photos: each made unique without leaving the path the same photo takes as a search."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.imaging import check_pixels, decode, is_complete_jpeg
from operations.bench import tagged


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_a_tagged_photo_is_unique_and_takes_the_upload_check_and_decode_of_the_photo_itself(extension: str) -> None:
    pixels = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(extension, pixels)
    assert ok
    photo = encoded.tobytes()
    one, other = tagged(photo, b"fecapass-bench-a-1"), tagged(photo, b"fecapass-bench-a-2")
    assert len({photo, one, other}) == 3
    for copy in (one, other):
        check_pixels(copy)  # a PNG's every chunk CRC checked; a JPEG still ends with its end marker
        assert is_complete_jpeg(copy) == (extension == ".jpg")
        assert np.array_equal(decode(copy, 10_000), decode(photo, 10_000))
