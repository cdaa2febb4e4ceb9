"""Where a job's photos and crops are, behind one interface for the stages: by key, S3 for what is kept (an enroll's
photo and crop) and Redis for what is transient (common/transient.py). A handler reads, stores and discards through
this and does not care which one holds the bytes."""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import TransientError
from common.objects import ObjectMissing, ObjectStore, crop_key, crop_location, discard_job_objects
from common.transient import PhotoExpired, TransientStore, crop_blob_key, is_transient, region_blob_key
from schemas.streams import JobKind, JobMessage


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

    def put_crop(self, message: JobMessage, face_index: int, png: bytes) -> str:
        """Store a face's crop, under a key that is the same on every delivery (a redelivery overwrites it): in S3 for
        an enroll (its face row points at it), in Redis for every other kind (read once by the embed stage).

        An enroll's crop also goes to Redis, under the blob key another kind's crop would have: the embed stage
        reads that copy (get_crops) instead of the S3 object, which would cost an HTTP request and the S3 server's
        CPU. The copy goes with the job's final write, as every crop blob does; S3 holds the crop either way."""
        blob = crop_blob_key(message.job_id, face_index)
        if message.kind is not JobKind.ENROLL:
            self.transient.put(blob, png)
            return blob
        key = crop_key(message.job_id, face_index)
        self.store.put(key, png, content_type="image/png")
        self.transient.put(blob, png)
        return key

    def get_crops(self, keys: Sequence[str]) -> list[bytes]:
        """The crops under ``keys`` (put_crop's), every Redis read in one round trip: an enroll's crop from its copy
        in Redis, or from S3 where the copy is gone (expired, or the message was written before copies existed)."""
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

    def keep_crop(self, key: str, job_id: str, face_index: int) -> str:
        """The crop under ``key`` made durable: a transient one copied to S3 (``crops/<job>/<face>.png``, where an
        enroll's crop would be), for a face that is kept after its job ends; returns its S3 key. Raises
        ``PhotoExpired`` if the blob is gone. The blob itself goes with the job's final write."""
        if not is_transient(key):
            return key
        durable = crop_key(job_id, face_index)
        self.store.put(durable, self.transient.get(key), content_type="image/png")
        return durable

    def discard(self, message: JobMessage, crop_keys: Sequence[str] | None = None) -> None:
        """Delete what a job that keeps no face left in S3. Its blobs are deleted by the runner, in the script of the
        write that ends the job (a handler's delete could come before a settle that turns out not to be its own)."""
        discard_job_objects(self.store, message.job_id, crop_keys, image_keys=message.image_keys)


def _copy_of(key: str) -> str | None:
    """The Redis copy an enroll's S3 crop has (put_crop); None for a key that is no crop."""
    location = crop_location(key)
    return crop_blob_key(*location) if location is not None else None
