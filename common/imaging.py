"""Robust image decoding: any common format -> 8-bit BGR, with a pixel-count guard before full decode."""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from isal import isal_zlib
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
    mode: str = ""  # Pillow's, from the header: "RGB", "L", "CMYK", "RGBA", "P", ...

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size."""
    if not data:
        raise NotAnImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            info = ImageInfo(format=image.format or "", width=image.width, height=image.height, mode=image.mode)
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
    _check_data_can_fill_frame(data, info)
    return info


# The fewest bytes a JPEG frame can take per pixel: a flat grey frame, progressive with optimised tables, takes
# ~1/256 byte a pixel (libjpeg, measured); a quarter of that is a file whose header declares a frame its data
# cannot hold (a 64x64 picture relabelled 7000x7000 decodes to 49 Mpx of grey, seconds of work downstream).
MIN_JPEG_BYTES_PER_PIXEL = 1 / 1024
# Deflate never compresses more than 1032:1, so a PNG shorter than its raw rows / 1032 cannot hold its frame.
DEFLATE_MAX_RATIO = 1032
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_data_can_fill_frame(data: bytes, info: ImageInfo) -> None:
    """Header against data, from the file's size alone: refuse a frame the bytes cannot possibly fill."""
    pixels = info.width * info.height
    if info.format in ("JPEG", "MPO") and len(data) < pixels * MIN_JPEG_BYTES_PER_PIXEL:
        raise UndecodableImage(f"{len(data)} bytes cannot hold a {info.width}x{info.height} JPEG frame")
    if info.format == "PNG" and len(data) * DEFLATE_MAX_RATIO < _png_raw_size(data):
        raise UndecodableImage(f"{len(data)} bytes cannot hold a {info.width}x{info.height} PNG frame")


def _png_raw_size(data: bytes) -> int:
    """Bytes of the filtered rows a PNG's IHDR declares (what its IDAT data must inflate to)."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-(columns * bits) // 8))
    return total


def decode_cost(info: ImageInfo) -> int:
    """Pixels ``check_pixels`` decodes for this image: a JPEG at 1/8 scale, anything else every pixel."""
    if info.format in ("JPEG", "MPO"):
        return -(-info.width // 8) * -(-info.height // 8)
    return info.width * info.height


def check_pixels(data: bytes) -> None:
    """Refuse truncated or corrupt files at upload instead of failing the job later. Call after ``probe``.

    A JPEG that ends with its end-of-image marker is accepted from its bytes (a truncated upload, the common case,
    lacks it; ``probe`` already refused one too small for its frame); reading its pixels was 6 ms of the API's
    ~18 ms CPU per upload (BENCHMARKS.md). A PNG is checked exactly without being held as pixels: every chunk's
    CRC, and its data inflated as a stream must fill the frame (a 7000x7000 PNG costs its inflate, not a 150 MB
    image). Anything else has every pixel read, a JPEG without its end marker at 1/8 scale through DCT scaling. A
    JPEG corrupt in a way the marker does not show fails its job as undecodable_image in the detect stage."""
    if is_complete_jpeg(data):
        return
    if data.startswith(PNG_SIGNATURE):
        _inflate_png(data)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, zlib.error) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from exc


def use_image_threads(count: int) -> None:
    """OpenCV's threads for this process (process-wide); 0 keeps OpenCV's default, a thread per core. (OpenCV's
    own 0 would mean no pool at all, which 1 already gives.)"""
    if count > 0:
        cv2.setNumThreads(count)


def is_complete_jpeg(data: bytes) -> bool:
    """What ``check_pixels`` accepts from its bytes alone, decoding nothing (the API then needs no decode slot)."""
    return data[:3] == b"\xff\xd8\xff" and _ends_complete(data)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# isal's stubs declare its error an instance of Exception; at run time it is the exception class.
_INFLATE_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]
_INFLATE_STEP = 1 << 20


def _inflate_png(data: bytes) -> None:
    """Walk the chunks (checking each CRC) and inflate the IDAT stream a megabyte at a time, discarding the output;
    the frame is complete when the stream inflates to the declared raw size. ISA-L's inflate and CRC-32 give zlib's
    results in under half its time (3.5 -> 1.6 ms for a PNG of ../shared/faces/basic, BENCHMARKS.md)."""
    try:
        _inflate_png_stream(data, _png_raw_size(data))
    except _INFLATE_ERROR as exc:  # a chunk whose CRC is right but whose data is no deflate stream
        raise UndecodableImage(f"the PNG's pixel data cannot be inflated: {exc}") from exc


def _inflate_png_stream(data: bytes, expected: int) -> None:
    inflater = isal_zlib.decompressobj()
    view = memoryview(data)  # slices of it are not copies
    produced = 0
    for kind, start, end in _png_chunks(data):
        if produced >= expected:
            break
        if end + 4 > len(data):
            raise UndecodableImage("the PNG ends inside a chunk")
        if isal_zlib.crc32(view[start - 4 : end]) != struct.unpack(">I", data[end : end + 4])[0]:
            raise UndecodableImage(f"broken PNG chunk {kind!r} (CRC)")
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending: bytes | memoryview = view[start:end]
            while pending and produced < expected and not inflater.eof:
                produced += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
    else:
        if produced < expected:
            raise UndecodableImage("the PNG ends before its pixel data does")
    if produced < expected:
        raise UndecodableImage(f"the PNG's pixel data fills {produced} of {expected} bytes of its frame")


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each chunk's type and where its data starts and ends (the end may lie past the file's: the caller checks),
    while a chunk's length and type fit in the file."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        yield kind, offset + 8, offset + 8 + length
        offset += length + 12


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
    scale = _dct_scale(info, fraction) if info.format == "JPEG" else 1
    decoded = _decode_with_opencv(data, info, scale)
    if decoded is not None:
        return Decoded(decoded, scale)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                if scale > 1:
                    image.draft("RGB", (-(-info.width // scale), -(-info.height // scale)))
                image.load()
                oriented = ImageOps.exif_transpose(image) or image
                rgb = _to_rgb8(oriented)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from exc
    # cvtColor copies channels in reverse order an order of magnitude faster than numpy's rgb[:, :, ::-1].
    return Decoded(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), scale)


def _decode_with_opencv(data: bytes, info: ImageInfo, scale: int) -> np.ndarray | None:
    """The BGR pixels from OpenCV where they are Pillow's pixels, else None (Pillow's path decodes it). OpenCV
    decodes straight into a BGR array in about half Pillow's time (Pillow's array conversion copies the image
    twice; a PNG of ../shared/faces/basic: 14.0 -> 7.7 ms): a whole JPEG in RGB or grey, EXIF orientation applied
    by both; an 8-bit RGB or RGBA PNG that nothing rotates and whose pixels are all opaque (Pillow lays transparent
    ones on white)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if info.format == "JPEG" and info.mode in ("RGB", "L") and _ends_complete(data):
        decoded: np.ndarray | None = cv2.imdecode(buffer, _OPENCV_JPEG_FLAGS[scale])
        return decoded
    if info.format != "PNG" or info.mode not in ("RGB", "RGBA") or not _png_is_unrotated_still(data):
        return None
    # IMREAD_UNCHANGED keeps the alpha channel and the bit depth (a 16-bit PNG is left to Pillow) and reads no
    # EXIF, which _png_is_unrotated_still has ruled out.
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint8 or decoded.ndim != 3:
        return None
    if decoded.shape[2] == 4:
        if int(decoded[:, :, 3].min()) < 255:
            return None
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2BGR)
    return decoded if decoded.shape[2] == 3 else None


# Text chunks where Pillow finds an orientation (``Image.getexif``: an eXIf chunk, a "Raw profile type exif" text,
# an XMP packet's tiff:Orientation); a compressed one could hide either, so it counts as one.
_PNG_ORIENTATION_MARKS = (b"Orientation", b"Raw profile type exif")


def _png_is_unrotated_still(data: bytes) -> bool:
    """No chunk of the PNG can rotate it (see above) or animate it (APNG: Pillow's first frame is not always
    the default image OpenCV decodes). Reads the chunk headers and the text chunks only."""
    for kind, start, end in _png_chunks(data):
        if kind in (b"eXIf", b"acTL", b"zTXt"):
            return False
        if kind in (b"tEXt", b"iTXt"):
            text = data[start:end]
            keyword_end = text.find(b"\0")
            if kind == b"iTXt" and text[keyword_end + 1 : keyword_end + 2] == b"\1":
                return False  # compressed
            if any(mark in text for mark in _PNG_ORIENTATION_MARKS):
                return False
        if kind == b"IEND":
            return True
    return True  # no IEND: OpenCV refuses a truncated file, and Pillow's path says why


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
    # What S3 keeps of a crop (an enroll's, a kept unknown face's: crop_url serves them); in Redis, on the way to the
    # embed stage, a crop is its raw pixels (common/job_bytes.py).
    ok, encoded = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()
