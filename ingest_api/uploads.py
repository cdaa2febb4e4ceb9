"""Reading an uploaded photo: size-limited, sniffed from its bytes (never trusting the filename), and checked
under a per-process bound on decoding work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from common.imaging import ImageInfo, ImageTooLarge, NotAnImage, UndecodableImage, check_pixels, decode_cost, probe
from ingest_api.problems import ApiError

CHUNK = 1 << 16
BUSY_RETRY_AFTER_SECONDS = 1


class DecodeSlots:
    """At most ``most`` upload checks at once and ``pixels`` decoded pixels in flight in this process.

    The cost of a check follows from the header, not the bytes: a 143 KB PNG can declare 49 Mpx. A check waits
    up to ``wait_seconds`` for room, then the upload is answered 503 ``busy``, so a burst of such files cannot
    take every core and gigabytes from everyone else's uploads. An image larger than the whole budget still
    runs, alone.
    """

    def __init__(self, most: int, pixels: int, wait_seconds: float) -> None:
        self.most = most
        self.pixels = pixels
        self.wait_seconds = wait_seconds
        self.running = 0
        self.pixels_in_flight = 0
        self.peak_pixels_in_flight = 0  # the largest pixels_in_flight seen: what the bound held to
        self._changed = asyncio.Condition()

    def _fits(self, cost: int) -> bool:
        if self.running == 0:
            return True
        return self.running < self.most and self.pixels_in_flight + cost <= self.pixels

    @contextlib.asynccontextmanager
    async def slot(self, cost: int) -> AsyncIterator[None]:
        async with self._changed:
            try:
                if not self._fits(cost):
                    await asyncio.wait_for(self._changed.wait_for(lambda: self._fits(cost)), self.wait_seconds)
            except TimeoutError:
                raise ApiError(
                    503,
                    "busy",
                    "the service is decoding as many images as it can; retry shortly",
                    headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
                ) from None
            self.running += 1
            self.pixels_in_flight += cost
            self.peak_pixels_in_flight = max(self.peak_pixels_in_flight, self.pixels_in_flight)
        try:
            yield
        finally:
            async with self._changed:
                self.running -= 1
                self.pixels_in_flight -= cost
                self._changed.notify_all()


async def read_photo(
    upload: UploadFile, max_bytes: int, max_pixels: int, slots: DecodeSlots
) -> tuple[bytes, ImageInfo]:
    """The photo's bytes and header facts, or a 413/415/422 problem (503 busy past the decoding bound)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "upload_too_large", f"the photo is larger than {max_bytes} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        info = probe(data, max_pixels)  # the header only, and its size against the file's
        async with slots.slot(decode_cost(info)):
            # The thread is not abandoned on cancellation: the slot is held until the decode really ends.
            await run_in_threadpool(check_pixels, data)
    except NotAnImage as exc:
        raise ApiError(415, "unsupported_media_type", f"not a supported image: {exc}") from exc
    except ImageTooLarge as exc:
        raise ApiError(422, "image_too_large", str(exc)) from exc
    except UndecodableImage as exc:
        raise ApiError(422, "undecodable_image", str(exc)) from exc
    return data, info
