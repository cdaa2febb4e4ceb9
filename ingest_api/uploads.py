"""Reading an uploaded photo: a multipart field or the whole request body (``Content-Type: image/jpeg``, png, webp:
no multipart framing to parse), size-limited, sniffed from its bytes (never trusting the filename or the content
type), and checked under a per-process bound on decoding work."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from common.imaging import (
    ImageInfo,
    ImageTooLarge,
    NotAnImage,
    UndecodableImage,
    check_pixels,
    decode_cost,
    is_complete_jpeg,
    probe,
)
from ingest_api.problems import ApiError

CHUNK = 1 << 16
BUSY_RETRY_AFTER_SECONDS = 1
# Content types of a photo sent as the request body. What the bytes are is still decided by sniffing them.
BODY_PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")


class BodyPhoto:
    """A photo sent as the request body itself."""

    def __init__(self, request: Request) -> None:
        self.request = request


Upload = UploadFile | BodyPhoto


async def photo_upload(
    request: Request,
    file: Annotated[
        UploadFile | None,
        File(
            description="JPEG, PNG, WebP, BMP, TIFF or GIF photo; or send the photo as the whole body instead, with"
            " Content-Type image/jpeg, image/png or image/webp"
        ),
    ] = None,
) -> Upload:
    """The request's photo: the multipart field ``file``, else the body of an ``image/*`` request."""
    if file is not None:
        return file
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type in BODY_PHOTO_TYPES:
        return BodyPhoto(request)
    raise ApiError(
        422,
        "invalid_request",
        "send the photo as the multipart field `file`, or as the body with Content-Type " + ", ".join(BODY_PHOTO_TYPES),
    )


async def _chunks(upload: Upload) -> AsyncIterator[bytes]:
    if isinstance(upload, BodyPhoto):
        async for chunk in upload.request.stream():
            if chunk:
                yield chunk
        return
    while chunk := await upload.read(CHUNK):
        yield chunk


class DecodeSlots:
    """At most ``most`` upload checks at once and ``pixels`` decoded pixels in flight in this process.

    The cost of a check follows from the header, not the bytes: a 143 KB PNG can declare 49 Mpx. A check waits
    up to ``wait_seconds`` for room, then the upload is answered 503 ``busy``, so a burst of such files cannot
    take every core and gigabytes from everyone else's uploads. An image larger than the whole budget still
    runs, alone. Checks are admitted in arrival order: one that finds others waiting queues behind them, so a
    waiting check is not overtaken again and again by later ones (that made a p99 of seconds under a burst).
    """

    def __init__(self, most: int, pixels: int, wait_seconds: float) -> None:
        self.most = most
        self.pixels = pixels
        self.wait_seconds = wait_seconds
        self.running = 0
        self.pixels_in_flight = 0
        self.peak_pixels_in_flight = 0  # the largest pixels_in_flight seen: what the bound held to
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, cost: int) -> bool:
        if self.running == 0:
            return True
        return self.running < self.most and self.pixels_in_flight + cost <= self.pixels

    def _take(self, cost: int) -> None:
        self.running += 1
        self.pixels_in_flight += cost
        self.peak_pixels_in_flight = max(self.peak_pixels_in_flight, self.pixels_in_flight)

    def _admit_waiting(self) -> None:
        """Hand room to the waiting checks, oldest first, while the oldest fits."""
        while self._waiting:
            cost, admitted = self._waiting[0]
            if admitted.done():  # timed out or cancelled: it left the queue
                self._waiting.popleft()
                continue
            if not self._fits(cost):
                return
            self._waiting.popleft()
            self._take(cost)
            admitted.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, cost: int) -> AsyncIterator[None]:
        if not self._waiting and self._fits(cost):
            self._take(cost)
        else:
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((cost, admitted))
            try:
                await asyncio.wait_for(asyncio.shield(admitted), self.wait_seconds)
            except BaseException as exc:
                if admitted.done() and not admitted.cancelled():  # admitted just as it gave up: give the room back
                    self._release(cost)
                else:
                    admitted.cancel()
                    self._admit_waiting()  # it may have been the oldest: those behind it may fit
                if isinstance(exc, TimeoutError):
                    raise ApiError(
                        503,
                        "busy",
                        "the service is decoding as many images as it can; retry shortly",
                        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
                    ) from None
                raise
        try:
            yield
        finally:
            self._release(cost)

    def _release(self, cost: int) -> None:
        self.running -= 1
        self.pixels_in_flight -= cost
        self._admit_waiting()


async def read_photo(upload: Upload, max_bytes: int, max_pixels: int, slots: DecodeSlots) -> tuple[bytes, ImageInfo]:
    """The photo's bytes and header facts, or a 413/415/422 problem (503 busy past the decoding bound)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in _chunks(upload):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "upload_too_large", f"the photo is larger than {max_bytes} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        info = probe(data, max_pixels)  # the header only, and its size against the file's
        if not is_complete_jpeg(data):  # a whole JPEG is accepted from its bytes: no decode, no slot, no thread
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
