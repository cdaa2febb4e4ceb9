"""``Fecapass``: the synchronous client. Its operations and retries are those of _operations.py and _exchange.py;
this class only sends the requests (httpx.Client) and sleeps (time.sleep)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import httpx

from fecapass_client import _operations as ops
from fecapass_client._exchange import Operation, Outcome, RetryPolicy, Sleep, plan
from fecapass_client._operations import Photo
from fecapass_client._session import client_headers, verifies_tls
from fecapass_client.models import (
    Cluster,
    Collection,
    DismissedCluster,
    Face,
    Health,
    Job,
    Me,
    NamedCluster,
    ReturnedFace,
    UnknownFacesPolicy,
    User,
)

T = TypeVar("T")


class Fecapass:
    """A Fecapass API at ``base_url`` (e.g. ``http://127.0.0.1:8000``) with an API key. Use it as a context
    manager, or call ``close()``. Failed calls raise ``FecapassError`` subclasses (fecapass_client.errors)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self._rng = random.Random()
        self._sleep: Callable[[float], None] = time.sleep  # the one other thing it does besides sending
        self._http = httpx.Client(
            base_url=base_url,
            headers=client_headers(api_key),
            timeout=timeout,
            transport=transport,
            verify=verifies_tls(base_url),
        )

    def __enter__(self) -> Fecapass:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, operation: Operation[T]) -> T:
        steps = plan(operation, self.retry, self._rng)
        outcome: Outcome = None
        try:
            while True:
                step = steps.send(outcome)
                if isinstance(step, Sleep):
                    self._sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    outcome = self._http.send(step.call.request(self._http))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as finished:
            result: T = finished.value
            return result

    # -- people --------------------------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        full_name: str = "",
        *,
        collection: str | None = None,
        external_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> User:
        return self._run(ops.create_user(email, full_name, collection, external_id, idempotency_key))

    def get_user(self, user_id: int) -> User:
        return self._run(ops.get_user(user_id))

    def list_users(
        self,
        *,
        collection: str | None = None,
        email: str | None = None,
        external_id: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> list[User]:
        return self._run(ops.list_users(collection, email, external_id, query, limit))

    def update_user(
        self,
        user_id: int,
        *,
        email: str | None = None,
        full_name: str | None = None,
        is_active: bool | None = None,
        external_id: str | None = None,
    ) -> User:
        return self._run(ops.update_user(user_id, email, full_name, is_active, external_id))

    def delete_user(self, user_id: int) -> None:
        self._run(ops.delete_user(user_id))

    def list_faces(self, user_id: int) -> list[Face]:
        return self._run(ops.list_faces(user_id))

    def get_face(self, face_id: int) -> Face:
        return self._run(ops.get_face(face_id))

    def delete_face(self, face_id: int) -> None:
        self._run(ops.delete_face(face_id))

    def merge_users(self, into_user_id: int, from_user_id: int) -> User:
        """Merge person ``from_user_id`` into ``into_user_id``: their faces move there, then they are erased."""
        return self._run(ops.merge_users(into_user_id, from_user_id))

    def move_face(self, face_id: int, user_id: int) -> Face:
        """Give the face to another person of its collection (it was enrolled for the wrong one)."""
        return self._run(ops.move_face(face_id, user_id))

    # -- collections ---------------------------------------------------------------------------------------

    def list_collections(self) -> list[Collection]:
        return self._run(ops.list_collections())

    def get_collection(self, name: str) -> Collection:
        return self._run(ops.get_collection(name))

    def create_collection(self, name: str) -> Collection:
        return self._run(ops.create_collection(name))

    def delete_collection(self, name: str) -> None:
        """Erase the collection and everyone in it (the ``default`` collection is emptied and stays)."""
        self._run(ops.delete_collection(name))

    # -- unknown faces -------------------------------------------------------------------------------------

    def list_clusters(self, *, collection: str | None = None, limit: int = 50) -> list[Cluster]:
        return self._run(ops.list_clusters(collection, limit))

    def name_cluster(
        self,
        cluster_id: int,
        *,
        user_id: int | None = None,
        email: str | None = None,
        full_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> NamedCluster:
        """The cluster's faces become enrolled faces of an existing person (``user_id``) or of a new one (``email``,
        ``full_name``)."""
        return self._run(ops.name_cluster(cluster_id, user_id, email, full_name, idempotency_key))

    def dismiss_cluster(self, cluster_id: int) -> DismissedCluster:
        return self._run(ops.dismiss_cluster(cluster_id))

    def not_this_person(self, face_id: int) -> ReturnedFace:
        return self._run(ops.not_this_person(face_id))

    def unknown_faces_policy(self, collection: str) -> UnknownFacesPolicy:
        return self._run(ops.unknown_faces_policy(collection))

    def set_unknown_faces_policy(
        self, collection: str, *, keep: bool | None = None, retention_hours: int | None = None
    ) -> UnknownFacesPolicy:
        return self._run(ops.set_unknown_faces_policy(collection, keep, retention_hours))

    # -- recognition ---------------------------------------------------------------------------------------

    def enroll(
        self,
        user_id: int,
        photo: Photo,
        *,
        filename: str | None = None,
        external_id: str | None = None,
        idempotency_key: str | None = None,
        wait: float = 0,
        callback_url: str | None = None,
    ) -> Job:
        return self._run(ops.enroll(user_id, photo, filename, external_id, idempotency_key, wait, callback_url))

    def search(
        self,
        photo: Photo,
        *,
        collection: str | None = None,
        threshold: float | None = None,
        limit: int | None = None,
        wait: float = 0,
        filename: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        return self._run(ops.search(photo, filename, collection, threshold, limit, wait, idempotency_key, callback_url))

    def verify(
        self,
        photo: Photo,
        *,
        user_id: int | None = None,
        second_photo: Photo | None = None,
        collection: str | None = None,
        threshold: float | None = None,
        wait: float = 0,
        filename: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        return self._run(
            ops.verify(
                photo, user_id, second_photo, filename, collection, threshold, wait, idempotency_key, callback_url
            )
        )

    def detect(
        self,
        photo: Photo,
        *,
        collection: str | None = None,
        wait: float = 0,
        filename: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        return self._run(ops.detect(photo, filename, collection, wait, idempotency_key, callback_url))

    def get_job(self, job_id: str) -> Job:
        return self._run(ops.get_job(job_id))

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> Job:
        return self._run(ops.wait_for_job(job_id, timeout))

    # -- the service ---------------------------------------------------------------------------------------

    def me(self) -> Me:
        return self._run(ops.me())

    def health(self) -> Health:
        return self._run(ops.health())
