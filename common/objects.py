"""The S3 object store: originals and aligned crops, under deterministic keys."""

from __future__ import annotations

import io

import urllib3
from minio import Minio
from minio.error import S3Error

from common.errors import TransientError


class ObjectMissing(LookupError):
    pass


def original_key(job_id: str) -> str:
    return f"originals/{job_id}"


def crop_key(job_id: str, face_index: int) -> str:
    return f"crops/{job_id}/{face_index}.png"


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
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"S3 put {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                raise ObjectMissing(key) from exc
            raise TransientError(f"S3 get {key}: {exc.code}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"S3 get {key}: {exc}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise
        return True

    def ping(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise ObjectMissing(f"bucket {self.bucket}")
