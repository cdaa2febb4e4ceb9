"""Robust image decoding: any common format -> 8-bit BGR, with a pixel-count guard before full decode."""

from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})

# Our own max_pixels check replaces Pillow's global bomb warning, which would otherwise fire first.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    pass


class NotAnImage(ImageError):
    """Not an image, or a format we do not accept."""


class ImageTooLarge(ImageError):
    """More pixels than allowed: refused from the header, before any pixel is decoded."""


class UndecodableImage(ImageError):
    """Looks like an image, but its pixels cannot be read (truncated, corrupt)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size."""
    if not data:
        raise NotAnImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            info = ImageInfo(format=image.format or "", width=image.width, height=image.height)
    except UnidentifiedImageError as exc:
        raise NotAnImage("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UndecodableImage(f"unreadable image header: {exc}") from exc
    if info.format not in SUPPORTED_FORMATS:
        raise NotAnImage(f"unsupported image format {info.format}")
    if info.width < 1 or info.height < 1:
        raise UndecodableImage("image has no pixels")
    if info.width * info.height > max_pixels:
        raise ImageTooLarge(f"{info.width}x{info.height} is more than {max_pixels} pixels")
    return info


def check_pixels(data: bytes) -> None:
    """Refuse truncated or corrupt files at upload instead of failing the job later. Call after ``probe``.

    A JPEG that ends with its end-of-image marker and a PNG whose every chunk checksum holds are accepted from
    their bytes alone (a truncated upload, the common case, lacks the one and fails the other); anything else
    has every pixel read, cheaply where it can be (JPEG at 1/8 scale through DCT scaling). Reading pixels was
    6 ms of the API's ~18 ms CPU per upload (BENCHMARKS.md); a file corrupt in a way neither check sees still
    fails its job as undecodable_image in the detect stage."""
    if (data[:3] == b"\xff\xd8\xff" and _ends_complete(data)) or _png_intact(data):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_intact(data: bytes) -> bool:
    """Every chunk of a PNG is whole with a matching CRC-32, ending with IEND: no pixel decoded (zlib's C
    checksum reads a few hundred MB/s)."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    view = memoryview(data)
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        length = int.from_bytes(view[offset : offset + 4], "big")
        end = offset + 8 + length
        if end + 4 > len(data):
            return False
        if zlib.crc32(view[offset + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return False
        if data[offset + 4 : offset + 8] == b"IEND":
            return True
        offset = end + 4
    return False


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # HxWx3 uint8 BGR
    scale: int  # original pixels per decoded pixel: 1, or 2, 4, 8 for a JPEG decoded at reduced size


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode to an HxWx3 uint8 BGR array, EXIF orientation applied, first frame of animations."""
    return decode_reduced(data, max_pixels, 1.0).image


def decode_reduced(data: bytes, max_pixels: int, fraction: float) -> Decoded:
    """Decode at no less than ``fraction`` of the full width and height: a JPEG is then decoded at 1/2, 1/4 or
    1/8 size through DCT scaling, several times faster than decoding every pixel and resizing (a detector
    that resizes photos to 640 px, or an aligner that makes 112 px crops, needs no more). Other formats are
    decoded at full size."""
    info = probe(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                scale = _dct_scale(info, fraction) if image.format == "JPEG" else 1
                if image.format == "JPEG" and image.mode in ("RGB", "L") and _ends_complete(data):
                    # OpenCV decodes straight into a BGR array, EXIF orientation applied (the same pixels as
                    # Pillow, in half the time: Pillow's array conversion copies the image twice).
                    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _OPENCV_JPEG_FLAGS[scale])
                    if decoded is not None:
                        return Decoded(decoded, scale)
                image.seek(0)
                if scale > 1:
                    image.draft("RGB", (-(-info.width // scale), -(-info.height // scale)))
                image.load()
                oriented = ImageOps.exif_transpose(image) or image
                rgb = _to_rgb8(oriented)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from exc
    # cvtColor copies channels in reverse order an order of magnitude faster than numpy's rgb[:, :, ::-1].
    return Decoded(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale)


_OPENCV_JPEG_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _ends_complete(data: bytes) -> bool:
    """A JPEG that ends with its end-of-image marker. OpenCV decodes a truncated file without an error (grey
    where data is missing); Pillow refuses it, so anything else takes Pillow's path."""
    return data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def _dct_scale(info: ImageInfo, fraction: float) -> int:
    """The largest JPEG DCT scale (1/2, 1/4, 1/8) that keeps both sides at ``fraction`` of the full size."""
    if fraction >= 0.5:
        return 1
    wanted_width, wanted_height = max(1, math.ceil(info.width * fraction)), max(1, math.ceil(info.height * fraction))
    room = min(info.width // wanted_width, info.height // wanted_height)
    return next((scale for scale in (8, 4, 2) if scale <= room), 1)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        gray = np.clip(pixels / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([gray] * 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, not black: black backgrounds make spurious dark "faces".
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def encode_png(image_bgr: np.ndarray) -> bytes:
    # Lossless, and as cheap as PNG gets: level 0 stores the pixels unpacked (~0.35 ms to encode a 112 px crop
    # and ~0.1 ms to decode it, against ~1.0 and ~0.4 at level 1) for a file 1.5 times larger (38 KB against 25).
    # Crops are written once and read once by the embed stage; the bytes are cheaper than the CPU.
    ok, encoded = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()
