"""Where a job's photos and crops are, behind one interface for the stages: by key, S3 for what is kept (an enroll's
photo and crop) and Redis for what is transient (common/transient.py). A handler reads, stores and discards through
this and does not care which one holds the bytes.

A crop is two things here. In Redis (every kind's blob, an enroll's copy included) it is its raw BGR pixels,
crop_size x crop_size x 3 bytes (``crop_blob``): the embed stage reads it once, and raw costs neither the PNG encode
(~0.35 ms a crop at level 0) nor the decode (~0.1 ms). In S3 (an enroll's, or one kept past its job) it is a PNG,
which ``crop_url`` serves to people. A reader (``crop_pixels``) tells the two apart by PNG's 8-byte signature, which
also covers blobs written before raw crops; the rare raw crop whose first pixels spell that signature is stored as a
PNG instead, so the rule never misreads one."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from common.errors import PoisonMessage, TransientError
from common.imaging import PNG_SIGNATURE, encode_png
from common.objects import ObjectMissing, ObjectStore, crop_key, crop_location, discard_job_objects
from common.packs.regions import raw_bytes, raw_pixels
from common.transient import PhotoExpired, TransientStore, crop_blob_key, is_transient, region_blob_key
from schemas.jobs import ErrorCode
from schemas.streams import JobKind, JobMessage


class UndecodableCrop(PoisonMessage):
    """A crop's bytes are neither a PNG nor the raw pixels of a crop of its message's size: no redelivery mends
    them."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(ErrorCode.UNDECODABLE_IMAGE, f"crop {key} {reason}")


def crop_blob(crop: np.ndarray) -> bytes:
    """What Redis holds of a crop (crop_size x crop_size x 3 uint8 BGR): its raw pixels, or a PNG where they begin
    with PNG's signature (a reader would take them for one)."""
    raw = raw_bytes(crop)
    return encode_png(crop) if raw.startswith(PNG_SIGNATURE) else raw


def crop_pixels(data: bytes, crop_size: int, key: str) -> np.ndarray:
    """A crop's pixels (crop_size x crop_size x 3 BGR) from a blob or an S3 object; ``key`` names it in the error.
    Raw pixels come back as a read-only view of ``data``. Raises ``UndecodableCrop``, also for a PNG of another
    size, which the recognizer would refuse for the whole batch it is in."""
    if data.startswith(PNG_SIGNATURE):
        try:
            crop = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            crop = None
        if crop is None:
            raise UndecodableCrop(key, "is not an image")
        if crop.shape != (crop_size, crop_size, 3):
            raise UndecodableCrop(key, f"is a {crop.shape[1]}x{crop.shape[0]} PNG, not a {crop_size} px crop")
        return crop
    pixels = raw_pixels(data, crop_size, crop_size) if crop_size > 0 else None
    if pixels is None:
        raise UndecodableCrop(key, f"has {len(data)} bytes: neither a PNG nor the raw pixels of a {crop_size} px crop")
    return pixels


def crop_png(data: bytes, crop_size: int, key: str) -> bytes:
    """A crop's bytes as S3 keeps them (a PNG, served by crop_url): a blob's raw pixels encoded, a PNG as it is.
    Raises ``UndecodableCrop`` as ``crop_pixels``."""
    return data if data.startswith(PNG_SIGNATURE) else encode_png(crop_pixels(data, crop_size, key))


class JobBytes:
    def __init__(self, store: ObjectStore, transient: TransientStore) -> None:
        self.store = store
        self.transient = transient

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; a blob gone fails the job (``photo_expired``), an S3 object missing is retried
        (it may still be replicating to this endpoint)."""
        if is_transient(key):
            return self.transient.get(key)
        try:
            return self.store.get(key)
        except ObjectMissing as exc:
            raise TransientError(f"object {key} is missing") from exc

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """All of them, the blobs in one round trip."""
        blobs = [key for key in keys if is_transient(key)]
        found = dict(zip(blobs, self.transient.get_many(blobs), strict=True))
        return [found[key] if key in found else self.get(key) for key in keys]

    def put_crop(self, message: JobMessage, face_index: int, crop: np.ndarray) -> str:
        """Store a face's crop (crop_size x crop_size x 3 uint8 BGR), under a key that is the same on every delivery
        (a redelivery overwrites it): in S3 for an enroll (its face row points at it), in Redis for every other kind
        (read once by the embed stage).

        An enroll's crop also goes to Redis, under the blob key another kind's crop would have: the embed stage
        reads that copy (get_crops) instead of the S3 object, which would cost an HTTP request and the S3 server's
        CPU. The copy goes with the job's final write, as every crop blob does; S3 holds the crop either way. The
        copy is raw pixels as every blob is (``crop_blob``); the S3 object is a PNG."""
        blob = crop_blob_key(message.job_id, face_index)
        if message.kind is not JobKind.ENROLL:
            self.transient.put(blob, crop_blob(crop))
            return blob
        key = crop_key(message.job_id, face_index)
        self.store.put(key, encode_png(crop), content_type="image/png")
        self.transient.put(blob, crop_blob(crop))
        return key

    def get_crops(self, keys: Sequence[str]) -> list[bytes]:
        """The crops under ``keys`` (put_crop's), every Redis read in one round trip: an enroll's crop from its copy
        in Redis, or from S3 where the copy is gone (expired, or the message was written before copies existed).
        Bytes as stored, raw or PNG: ``crop_pixels`` reads either."""
        in_redis = {key: key if is_transient(key) else _copy_of(key) for key in keys}
        wanted = sorted({blob for blob in in_redis.values() if blob is not None})
        found = dict(zip(wanted, self.transient.get_present(wanted), strict=True))
        crops = []
        for key in keys:
            data = found.get(in_redis[key] or "")
            if data is None and is_transient(key):
                raise PhotoExpired(key)  # the blob is the only copy of a crop that is not an enroll's
            crops.append(data if data is not None else self.get(key))
        return crops

    def put_regions(self, message: JobMessage, regions: Sequence[bytes]) -> list[str]:
        """Store each face's region of its photo (raw pixels, read once by the align stage) in Redis, for every kind:
        an enroll keeps its photo and crop, never the region. Keys are the same on every delivery."""
        keys = [region_blob_key(message.job_id, index) for index in range(len(regions))]
        self.transient.put_many(keys, regions)
        return keys

    def discard(self, message: JobMessage, crop_keys: Sequence[str] | None = None) -> None:
        """Delete what a job that keeps no face left in S3. Its blobs are deleted by the runner, in the script of the
        write that ends the job (a handler's delete could come before a settle that turns out not to be its own)."""
        discard_job_objects(self.store, message.job_id, crop_keys, image_keys=message.image_keys)


def _copy_of(key: str) -> str | None:
    """The Redis copy an enroll's S3 crop has (put_crop); None for a key that is no crop."""
    location = crop_location(key)
    return crop_blob_key(*location) if location is not None else None
