"""``check_pixels``, the upload's refusal of truncated and corrupt photos, mostly without decoding a pixel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common import imaging
from common.imaging import UndecodableImage, check_pixels, encode_png


def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((160, 120), 60).convert("RGB").save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times check_pixels fell back to reading pixels."""
    calls: list[int] = []
    opened = imaging.Image.open

    def counting(*args: object, **kwargs: object) -> Image.Image:
        calls.append(1)
        return opened(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(imaging.Image, "open", counting)
    return calls


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_whole_jpeg_and_png_pass_without_reading_pixels(fmt: str, decodes: list[int]) -> None:
    check_pixels(encoded(fmt))
    check_pixels(encode_png(np.zeros((112, 112, 3), dtype=np.uint8)))
    assert decodes == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
@pytest.mark.parametrize("kept", [0.3, 0.6, 0.95])
def test_truncated_photos_are_refused(fmt: str, kept: float) -> None:
    data = encoded(fmt)
    with pytest.raises(UndecodableImage):
        check_pixels(data[: int(len(data) * kept)])


def test_a_png_with_a_damaged_pixel_chunk_is_refused() -> None:
    data = bytearray(encoded("PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # inside the compressed pixels: the chunk's CRC no longer matches
    with pytest.raises(UndecodableImage):
        check_pixels(bytes(data))


def test_a_jpeg_with_bytes_after_its_end_is_read_and_accepted(decodes: list[int]) -> None:
    check_pixels(encoded("JPEG") + b"trailing metadata of some camera")
    assert decodes == [1]  # no end marker last: its pixels were read


def test_a_png_with_its_end_chunk_cut_is_read_and_refused_when_pixels_are_missing() -> None:
    data = encoded("PNG")
    with pytest.raises(UndecodableImage):
        check_pixels(data[: data.index(b"IEND") - 4 - 100])
