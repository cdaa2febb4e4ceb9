"""Reading an uploaded photo: size-limited, sniffed from its bytes (never trusting the filename)."""

from __future__ import annotations

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from common.imaging import ImageInfo, ImageTooLarge, NotAnImage, UndecodableImage, check_pixels, probe
from ingest_api.problems import ApiError

CHUNK = 1 << 16


async def read_photo(upload: UploadFile, max_bytes: int, max_pixels: int) -> tuple[bytes, ImageInfo]:
    """The photo's bytes and header facts, or a 413/415/422 problem."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "upload_too_large", f"the photo is larger than {max_bytes} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        info = probe(data, max_pixels)
        await run_in_threadpool(check_pixels, data)
    except NotAnImage as exc:
        raise ApiError(415, "unsupported_media_type", f"not a supported image: {exc}") from exc
    except ImageTooLarge as exc:
        raise ApiError(422, "image_too_large", str(exc)) from exc
    except UndecodableImage as exc:
        raise ApiError(422, "undecodable_image", str(exc)) from exc
    return data, info
