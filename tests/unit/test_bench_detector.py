"""The detector input the profile's rejected lever would use: insightface's resize kept, padded to 32."""

from __future__ import annotations

from operations.bench_detector import DET_SIZE, cut_input


def test_a_landscape_photo_keeps_its_width_and_pads_its_height_to_a_multiple_of_32() -> None:
    assert cut_input(1080, 1920, 0) == (640, 384)  # 360 rows of photo
    assert cut_input(1080, 1920, 32) == (640, 416)


def test_a_portrait_photo_keeps_its_height_and_no_side_passes_the_square_input() -> None:
    assert cut_input(1200, 599, 0) == (320, 640)
    assert cut_input(1000, 1000, 0) == (DET_SIZE, DET_SIZE)
    assert cut_input(1080, 1920, 1000) == (DET_SIZE, DET_SIZE)
