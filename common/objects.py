"""The S3 object store: originals and aligned crops, under deterministic keys."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from common.errors import DependencyUnavailable, RetryThenFail
from common.transient import is_transient
from schemas.jobs import ErrorCode

# What a failed request can raise besides S3's own error answers: 5xx after the client's retries, a refused or
# broken connection, a body cut short.
_REQUEST_ERRORS = (ServerError, urllib3.exceptions.HTTPError, OSError)


class ObjectMissing(LookupError):
    pass


class ObjectUnreadable(RetryThenFail):
    """One object fails (a 5xx for that key, a body cut short) while the store answers for others: the message is
    retried by redelivery and its job fails with ``object_unreadable`` when the retries are spent, instead of the
    stage waiting in place as for an outage."""

    def __init__(self, key: str, error: object) -> None:
        super().__init__(ErrorCode.OBJECT_UNREADABLE, f"object {key} cannot be read: {error}")


ORIGINALS_PREFIX = "originals/"


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: float  # unix time, the S3 server's clock


def job_of_original(key: str) -> str:
    """The job id in an original's key (``original_key``'s inverse)."""
    return key.removeprefix(ORIGINALS_PREFIX).split(".", 1)[0]


def original_key(job_id: str, source: int = 0) -> str:
    return f"originals/{job_id}" if source == 0 else f"originals/{job_id}.{source}"


def crop_key(job_id: str, face_index: int) -> str:
    return f"crops/{job_id}/{face_index}.png"


def crop_location(key: str) -> tuple[str, int] | None:
    """The job id and face index in a crop's key (``crop_key``'s inverse); None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "crops" or not parts[2].endswith(".png"):
        return None
    index = parts[2].removesuffix(".png")
    return (parts[1], int(index)) if index.isdigit() else None


def crop_prefix(job_id: str) -> str:
    return f"crops/{job_id}/"


def discard_job_objects(
    store: ObjectStore,
    job_id: str,
    crop_keys: Sequence[str] | None = None,
    *,
    image_keys: Sequence[str] | None = None,
) -> None:
    """Remove a job's photo and crops from S3 when the job keeps no face: search photos and failed enrolls are not
    kept, they are biometric data of people who may never have agreed to be stored. ``crop_keys``: the job's
    crops where the caller knows them (one delete request then), else they are listed by prefix. ``image_keys``: the
    job's photos where the caller knows them: only this job's originals among them are deleted, and a job whose
    photos are not in S3 (transient, in Redis: common/transient.py) has no crops there either unless ``crop_keys``
    names them. Transient keys are skipped: the runner deletes them with the job's final write."""
    if image_keys is None:
        originals = [original_key(job_id), original_key(job_id, 1)]
    else:
        own = (original_key(job_id), original_key(job_id, 1))
        originals = [key for key in image_keys if key in own]
    if crop_keys is None:
        if image_keys is not None and not originals:
            return  # nothing of this job's was ever written to S3
        store.delete_many(originals)
        store.delete_prefix(crop_prefix(job_id))
    else:
        durable = [*originals, *(key for key in crop_keys if not is_transient(key))]
        if durable:
            store.delete_many(durable)


class ObjectStore:
    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _failure(self, action: str, key: str, error: object) -> Exception:
        """What a failed request on one key means: the store down (every key fails: wait it out) or this object
        unreadable (the store answers a cheap HEAD of the bucket: only this key is bad)."""
        try:
            store_answers = self.client.bucket_exists(self.bucket)
        except (S3Error, *_REQUEST_ERRORS):
            store_answers = False
        if store_answers:
            return ObjectUnreadable(key, error)
        return DependencyUnavailable(f"S3 {action} {key}: {error}")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except _REQUEST_ERRORS as exc:
            raise self._failure("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                raise ObjectMissing(key) from exc
            raise self._failure("get", key, exc.code) from exc
        except InvalidResponseError as exc:
            # Some S3 servers answer a missing key with a 404 whose body is not labelled as XML.
            if getattr(exc, "_code", None) == 404:
                raise ObjectMissing(key) from exc
            raise self._failure("get", key, exc) from exc
        except _REQUEST_ERRORS as exc:
            raise self._failure("get", key, exc) from exc
        try:
            return response.read()
        except _REQUEST_ERRORS as exc:  # the body cut short
            raise self._failure("get", key, exc) from exc
        finally:
            response.close()
            response.release_conn()

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects in one request per thousand (S3 DeleteObjects); a key already gone is fine."""
        if not keys:
            return
        try:
            # The SDK sends the request as its answer is read: the list() is what deletes.
            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(key) for key in keys]))
        except (S3Error, ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 delete: {exc}") from exc
        if errors:
            raise DependencyUnavailable(f"S3 delete of {errors[0].name}: {errors[0].code} {errors[0].message}")

    def delete_prefix(self, prefix: str) -> None:
        try:
            keys = [obj.object_name for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 list {prefix}: {exc}") from exc
        self.delete_many([key for key in keys if key])

    def listing(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[StoredObject]:
        """One page of objects under ``prefix`` in key order, after ``start_after``, with their times."""
        try:
            found = self.client.list_objects(self.bucket, prefix=prefix, recursive=True, start_after=start_after)
            return [
                StoredObject(obj.object_name, obj.last_modified.timestamp() if obj.last_modified else 0.0)
                for obj in itertools.islice(found, limit)
                if obj.object_name
            ]
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 list {prefix}: {exc}") from exc

    def keys(self, prefix: str = "") -> list[str]:
        return [
            obj.object_name
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if obj.object_name
        ]

    def presigned_url(self, key: str, expires: timedelta) -> str:
        return str(self.client.presigned_get_object(self.bucket, key, expires=expires))

    def ping(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise ObjectMissing(f"bucket {self.bucket}")
