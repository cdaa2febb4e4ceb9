from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from common.imaging import (
    ImageTooLarge,
    NotAnImage,
    UndecodableImage,
    check_pixels,
    decode,
    decode_cost,
    decode_reduced,
    encode_png,
    probe,
)

MAX = 50_000_000


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries (almost) no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_rgb_jpeg_decodes_to_bgr() -> None:
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    out = decode(encode(image, "JPEG", quality=95), MAX)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    b, g, r = out[15, 20]
    assert r > 240 and g < 20 and b < 20  # red lands in the last channel: BGR


def test_rgba_transparency_becomes_white_and_gray_becomes_three_channels() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode(encode(rgba, "PNG"), MAX)[0, 0].tolist() == [255, 255, 255]
    gray = Image.new("L", (8, 8), 100)
    assert decode(encode(gray, "PNG"), MAX)[0, 0].tolist() == [100, 100, 100]


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    pixels = np.full((4, 4), 65535, dtype=np.uint16)
    pixels[0, 0] = 32768
    image = Image.fromarray(pixels)  # uint16 -> mode I;16
    out = decode(encode(image, "PNG"), MAX)
    assert out[1, 1].tolist() == [255, 255, 255]
    assert 126 <= out[0, 0, 0] <= 129


def test_cmyk_jpeg_and_animated_gif_decode() -> None:
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # red in CMYK
    assert decode(encode(cmyk, "JPEG"), MAX).shape == (10, 10, 3)
    frames = [Image.new("RGB", (12, 9), colour) for colour in ((0, 0, 255), (0, 255, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    first = decode(gif.getvalue(), MAX)
    assert first.shape == (9, 12, 3) and first[0, 0, 0] > 200  # first frame, blue, in BGR's first channel


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(encode(image, "JPEG", exif=exif.tobytes()), MAX)
    assert out.shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotAnImage),
        (b"just some text, renamed to photo.jpg", NotAnImage),
        (b"%PDF-1.4 not an image", NotAnImage),
    ],
)
def test_not_an_image(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        probe(data, MAX)


def test_truncated_jpeg_fails_to_decode_but_probes() -> None:
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    truncated = data[: len(data) // 2]
    assert probe(truncated, MAX).format == "JPEG"  # header is intact
    with pytest.raises(UndecodableImage):
        decode(truncated, MAX)


def test_decompression_bomb_refused_from_header() -> None:
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 200
    with pytest.raises(ImageTooLarge, match="50000x50000"):
        probe(bomb, MAX)
    with pytest.raises(ImageTooLarge):
        decode(bomb, MAX)


def test_one_pixel_image_decodes() -> None:
    assert decode(encode(Image.new("RGB", (1, 1)), "PNG"), MAX).shape == (1, 1, 3)


def test_jpeg_decodes_at_reduced_size_only_as_far_as_asked() -> None:
    gradient = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    data = encode(Image.fromarray(np.stack([gradient] * 3, axis=-1)), "JPEG", quality=95)
    assert decode_reduced(data, MAX, 1.0).scale == 1
    assert decode_reduced(data, MAX, 3.0).image.shape == (600, 800, 3)  # more than every pixel: every pixel
    assert decode_reduced(data, MAX, 0.6).scale == 1  # half size would be less than asked
    half = decode_reduced(data, MAX, 0.4)
    assert half.scale == 2 and half.image.shape == (300, 400, 3)
    eighth = decode_reduced(data, MAX, 0.01)
    assert eighth.scale == 8 and eighth.image.shape == (75, 100, 3)
    # The same picture: a reduced pixel is the mean of the full pixels it covers.
    full = decode(data, MAX).astype(np.float32)
    assert np.abs(half.image[:, :, 0].astype(np.float32) - full[::2, ::2, 0]).mean() < 3


def test_png_and_rotated_jpeg_at_reduced_size() -> None:
    assert decode_reduced(encode(Image.new("RGB", (64, 48)), "PNG"), MAX, 0.1).scale == 1  # no DCT to scale
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(Image.new("RGB", (400, 200), (0, 0, 255)), "JPEG", exif=exif.tobytes())
    reduced = decode_reduced(data, MAX, 0.25)
    assert reduced.scale == 4 and reduced.image.shape == (100, 50, 3)


def test_crop_png_is_lossless() -> None:
    crop = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(crop), MAX), crop)


def test_both_jpeg_decoders_give_the_same_pixels() -> None:
    """Complete JPEGs take OpenCV's path; one with bytes after its end marker takes Pillow's."""
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    for image in (noise, noise.convert("L")):
        data = encode(image, "JPEG", quality=90)
        for fraction in (1.0, 0.3):
            fast, careful = decode_reduced(data, MAX, fraction), decode_reduced(data + b"trailer", MAX, fraction)
            assert fast.scale == careful.scale and fast.image.shape == careful.image.shape
            assert fast.image.shape[2] == 3
            assert np.abs(fast.image.astype(int) - careful.image.astype(int)).max() <= 1


# -- header against data ---------------------------------------------------------------------------------------


def png_full_frame(width: int, height: int) -> bytes:
    """A PNG whose data really fills a width x height frame, at deflate's best ratio: the smallest valid file of
    that size (a 7000x7000 one is ~143 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * ((1 + 3 * width) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def relabelled_jpeg(width: int, height: int) -> bytes:
    """A 64x64 JPEG whose frame header claims width x height: decoders fill the rest with grey, at full cost."""
    data = bytearray(encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG"))
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


def test_a_jpeg_too_small_for_its_declared_frame_is_refused_from_the_header() -> None:
    lying = relabelled_jpeg(7000, 7000)
    assert len(lying) < 5000
    with pytest.raises(UndecodableImage, match="cannot hold a 7000x7000 JPEG"):
        probe(lying, MAX)
    with pytest.raises(UndecodableImage):  # the stages refuse it too, before decoding
        decode_reduced(lying, MAX, 0.1)


def test_the_smallest_real_jpegs_and_pngs_pass_the_header_check() -> None:
    for mode, fill in (("L", 128), ("RGB", (128, 128, 128))):
        flat = Image.new(mode, (3000, 3000), fill)  # flat grey: the best any encoder compresses a frame
        for options in ({"quality": 5, "optimize": True}, {"quality": 5, "progressive": True, "optimize": True}):
            data = encode(flat, "JPEG", **options)
            assert probe(data, MAX).width == 3000
            check_pixels(data)
    bomb = png_full_frame(4000, 3000)
    assert probe(bomb, MAX).height == 3000
    check_pixels(bomb)  # complete: accepted (its cost is bounded per API process, not here)


def test_a_png_whose_data_cannot_fill_its_frame_is_refused() -> None:
    with pytest.raises(UndecodableImage, match="cannot hold a 4000x4000 PNG"):
        probe(png_header_only(4000, 4000), MAX)  # from the file size alone
    complete = png_full_frame(300, 200)
    idat = complete.index(b"IDAT")
    length = struct.unpack(">I", complete[idat - 4 : idat])[0]
    short_rows = zlib.compress(b"\0" * ((1 + 3 * 300) * 150), 9)  # 150 of 200 rows
    chunk = struct.pack(">I", len(short_rows)) + b"IDAT" + short_rows
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + short_rows))
    short = complete[: idat - 4] + chunk + complete[idat + 4 + length + 4 :]
    with pytest.raises(UndecodableImage, match="fills"):
        check_pixels(short)
    corrupt = bytearray(complete)
    corrupt[idat + 10] ^= 0xFF  # the CRC no longer matches
    with pytest.raises(UndecodableImage):
        check_pixels(bytes(corrupt))
    with pytest.raises(UndecodableImage):
        check_pixels(complete[: len(complete) - 30])  # truncated inside the data


def test_ordinary_pngs_of_every_mode_pass_the_streamed_check() -> None:
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        data = encode(Image.new(mode, (123, 77)), "PNG")
        probe(data, MAX)
        check_pixels(data)
        with pytest.raises(UndecodableImage):
            check_pixels(data[:-20])


def test_decode_cost_counts_what_the_check_decodes() -> None:
    jpeg_info = probe(encode(Image.new("RGB", (800, 600)), "JPEG"), MAX)
    png_info = probe(encode(Image.new("RGB", (800, 600)), "PNG"), MAX)
    assert decode_cost(jpeg_info) == 100 * 75  # checked at 1/8 scale
    assert decode_cost(png_info) == 800 * 600


# -- PNGs through OpenCV where it gives Pillow's pixels ---------------------------------------------------------


def pillow_pixels(data: bytes) -> np.ndarray:
    """What decode gave every PNG before OpenCV's path: Pillow, orientation applied, transparency on white."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        oriented = ImageOps.exif_transpose(image) or image
        if oriented.mode in ("RGBA", "LA", "PA") or (oriented.mode == "P" and "transparency" in oriented.info):
            rgba = oriented.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        elif oriented.mode.startswith("I;16"):
            return decode(data, MAX)  # checked by test_sixteen_bit_png_is_scaled_to_eight_bits
        else:
            rgb = oriented.convert("RGB")
    return np.asarray(rgb)[:, :, ::-1]


def noise_image(mode: str, size: tuple[int, int] = (97, 61)) -> Image.Image:
    rng = np.random.default_rng(7)
    rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode)


def with_orientation(image: Image.Image, **save: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    return encode(image, "PNG", exif=exif, **save)


def xmp_rotated(image: Image.Image) -> bytes:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return encode(image, "PNG", pnginfo=info)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(noise_image("RGB"), "PNG"),
        lambda: encode(noise_image("RGB"), "PNG", optimize=True),
        lambda: adam7_interlaced(noise_image("RGB")),
        lambda: encode(_opaque(noise_image("RGBA")), "PNG"),
        lambda: encode(noise_image("RGBA"), "PNG"),  # transparent pixels: Pillow's path
        lambda: encode(noise_image("L"), "PNG"),
        lambda: encode(noise_image("LA"), "PNG"),
        lambda: encode(noise_image("P"), "PNG"),
        lambda: encode(noise_image("P"), "PNG", transparency=3),
        lambda: with_orientation(noise_image("RGB")),
        lambda: with_orientation(_opaque(noise_image("RGBA"))),
        lambda: xmp_rotated(noise_image("RGB")),
    ],
    ids=[
        "rgb",
        "rgb-optimized",
        "rgb-interlaced",
        "rgba-opaque",
        "rgba-transparent",
        "grey",
        "grey-alpha",
        "palette",
        "palette-transparent",
        "exif-rotated",
        "rgba-exif-rotated",
        "xmp-rotated",
    ],
)
def test_every_png_decodes_to_pillows_pixels(make: Callable[[], bytes]) -> None:
    data = make()
    assert np.array_equal(decode(data, MAX), pillow_pixels(data))


def adam7_interlaced(image: Image.Image) -> bytes:
    """Pillow writes no interlaced PNG; libpng (OpenCV) does not either, so the IDAT is built here."""
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    rows = b""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            rows += b"".join(b"\0" + row.tobytes() for row in sub)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _opaque(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.putalpha(255)
    return image


def test_rotated_pngs_are_rotated() -> None:
    image = noise_image("RGB")  # 97 x 61
    for data in (with_orientation(image), xmp_rotated(image)):
        assert decode(data, MAX).shape == (97, 61, 3)


def test_a_sixteen_bit_rgb_png_decodes_as_pillow_does() -> None:
    pixels = np.random.default_rng(2).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    assert np.array_equal(decode(data.tobytes(), MAX), pillow_pixels(data.tobytes()))


def test_a_truncated_or_damaged_png_fails_or_decodes_as_pillow_would() -> None:
    """Cut in its data: undecodable. Without its IEND, or its last IDAT bytes: Pillow decodes what is there, and so
    does OpenCV, to the same pixels (the upload check refuses the second: its last chunk runs past the end)."""
    data = encode(noise_image("RGB", (300, 200)), "PNG")
    with pytest.raises(OSError):
        pillow_pixels(data[: len(data) // 2])
    with pytest.raises(UndecodableImage):
        decode(data[: len(data) // 2], MAX)
    for damaged in (data[:-12], data[:-30] + data[-12:]):
        assert np.array_equal(decode(damaged, MAX), pillow_pixels(damaged))
    with pytest.raises(UndecodableImage, match="ends inside a chunk"):
        check_pixels(data[:-30] + data[-12:])


def test_a_png_whose_data_is_no_deflate_stream_is_refused_as_undecodable() -> None:
    """Every CRC right, the IDAT's bytes not zlib's: the upload check says undecodable (was an uncaught error)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not a deflate stream") + chunk(b"IEND", b"")
    with pytest.raises(UndecodableImage, match="cannot be inflated"):
        check_pixels(png)
