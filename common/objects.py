"""The S3 object store: originals and aligned crops, under deterministic keys."""

from __future__ import annotations

import io
from datetime import timedelta

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from common.errors import DependencyUnavailable


class ObjectMissing(LookupError):
    pass


def original_key(job_id: str, source: int = 0) -> str:
    return f"originals/{job_id}" if source == 0 else f"originals/{job_id}.{source}"


def crop_key(job_id: str, face_index: int) -> str:
    return f"crops/{job_id}/{face_index}.png"


def crop_prefix(job_id: str) -> str:
    return f"crops/{job_id}/"


def discard_job_objects(store: ObjectStore, job_id: str) -> None:
    """Remove a job's photo and crops when the job keeps no face: search photos and failed enrolls are not
    kept, they are biometric data of people who may never have agreed to be stored."""
    store.delete_many([original_key(job_id), original_key(job_id, 1)])
    store.delete_prefix(crop_prefix(job_id))


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

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 put {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                raise ObjectMissing(key) from exc
            raise DependencyUnavailable(f"S3 get {key}: {exc.code}") from exc
        except InvalidResponseError as exc:
            # Some S3 servers answer a missing key with a 404 whose body is not labelled as XML.
            if getattr(exc, "_code", None) == 404:
                raise ObjectMissing(key) from exc
            raise DependencyUnavailable(f"S3 get {key}: {exc}") from exc
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 get {key}: {exc}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def delete_many(self, keys: list[str]) -> None:
        """Delete objects; a key that is already gone is fine."""
        try:
            for key in keys:
                self.client.remove_object(self.bucket, key)
        except (ServerError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 delete: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        try:
            keys = [obj.object_name for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DependencyUnavailable(f"S3 list {prefix}: {exc}") from exc
        self.delete_many([key for key in keys if key])

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
