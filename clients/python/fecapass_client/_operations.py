"""Every API operation once, for both clients: the requests it makes and how it reads their answers. Each is a
generator (see _exchange.py): the clients run it with their own transport."""

from __future__ import annotations

import mimetypes
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

from fecapass_client._exchange import Answer, Call, Operation, Sleep, expect_list, expect_object
from fecapass_client.errors import InvalidResponse, JobTimeout
from fecapass_client.models import (
    Cluster,
    ClusterPage,
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
    UserPage,
    parse,
    parse_job,
)

Photo = Union[bytes, str, "os.PathLike[str]"]
# The longest `q` the API takes (GET /v1/users).
QUERY_MAX_LENGTH = 200
# The longest single long poll asked of the server (the API caps it at FECAPASS_MAX_WAIT_SECONDS anyway).
LONG_POLL_SECONDS = 30.0
# Between polls when the server answered before the wait asked for (its cap is lower, or 0).
POLL_INTERVAL_SECONDS = 0.5
POLL_INTERVAL_CAP_SECONDS = 2.0
# A collection's name, as the API checks it: it goes into URL paths, where ".." or "/" would name another resource.
COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _id(value: int, name: str) -> int:
    """An id for a URL path: an int, never a string that could carry a path of its own."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _name(value: str) -> str:
    """A collection's name for a URL path: refused here unless the API could have made it."""
    if not isinstance(value, str) or not COLLECTION_NAME.fullmatch(value):
        raise ValueError(f"not a collection name (lower case letters, digits, - and _): {value!r}")
    return value


def _photo_file(field: str, photo: Photo, filename: str | None) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(photo, bytes | bytearray | memoryview):
        data, name = bytes(photo), filename or "photo"
    elif isinstance(photo, str | os.PathLike):
        path = Path(photo)
        data, name = path.read_bytes(), filename or path.name
    else:
        raise TypeError(f"a photo is bytes or a path, got {type(photo).__name__}")
    return field, (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream")


def _given(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _one(answer: Answer | None) -> User:
    return parse(User, expect_object(answer))


def create_user(
    email: str, full_name: str, collection: str | None, external_id: str | None, idempotency_key: str | None
) -> Operation[User]:
    body = {"email": email, "full_name": full_name, **_given(collection=collection, external_id=external_id)}
    return _once(Call("POST", "/v1/users", json=body, idempotency_key=idempotency_key or new_idempotency_key()), _one)


def get_user(user_id: int) -> Operation[User]:
    return _once(Call("GET", f"/v1/users/{_id(user_id, 'user_id')}"), _one)


def update_user(
    user_id: int,
    email: str | None,
    full_name: str | None,
    is_active: bool | None,
    external_id: str | None,
) -> Operation[User]:
    body = _given(email=email, full_name=full_name, is_active=is_active, external_id=external_id)
    return _once(Call("PATCH", f"/v1/users/{_id(user_id, 'user_id')}", json=body), _one)


def delete_user(user_id: int) -> Operation[None]:
    return _once(Call("DELETE", f"/v1/users/{_id(user_id, 'user_id')}", gone_is_done=True), lambda _: None)


def list_users(
    collection: str | None, email: str | None, external_id: str | None, query: str | None, limit: int
) -> Operation[list[User]]:
    """Every page, ``limit`` users a page. ``email`` and ``external_id`` are sent for the server to filter by and
    checked here as well, so that a server that does not filter by them yet gives the same answer; an email also
    narrows the server's ``q`` (name or email contains) when no ``query`` is given."""
    params: dict[str, str | int | float] = {"limit": limit, **_given(collection=collection, external_id=external_id)}
    if email is not None:
        params["email"] = email
    q = query if query is not None else email
    if q is not None and len(q) <= QUERY_MAX_LENGTH:  # a longer address is matched here only
        params["q"] = q
    users: list[User] = []
    after = 0
    while True:
        page = parse(UserPage, expect_object((yield Call("GET", "/v1/users", params={**params, "after": after}))))
        users.extend(
            user
            for user in page.items
            if (email is None or user.email.casefold() == email.casefold())
            and (external_id is None or user.external_id == external_id)
        )
        if page.next_after is None:
            return users
        if page.next_after <= after:  # a page that does not move forward would loop for ever
            raise InvalidResponse(f"next_after {page.next_after} after {after}")
        after = page.next_after


def list_faces(user_id: int) -> Operation[list[Face]]:
    return _once(
        Call("GET", f"/v1/users/{_id(user_id, 'user_id')}/faces"),
        lambda answer: [parse(Face, item) for item in expect_list(answer)],
    )


def get_face(face_id: int) -> Operation[Face]:
    return _once(Call("GET", f"/v1/faces/{_id(face_id, 'face_id')}"), lambda a: parse(Face, expect_object(a)))


def delete_face(face_id: int) -> Operation[None]:
    return _once(Call("DELETE", f"/v1/faces/{_id(face_id, 'face_id')}", gone_is_done=True), lambda _: None)


def move_face(face_id: int, user_id: int) -> Operation[Face]:
    """Repeating a move that was done changes nothing, so a retry after a lost answer is safe without a key."""
    call = Call("POST", f"/v1/faces/{_id(face_id, 'face_id')}/move", json={"user_id": _id(user_id, "user_id")})
    return _once(call, lambda a: parse(Face, expect_object(a)))


def merge_users(into_user_id: int, from_user_id: int) -> Operation[User]:
    """Repeating a merge that was done answers with the same user, so a retry needs no key either."""
    body = {"from_user_id": _id(from_user_id, "from_user_id")}
    return _once(Call("POST", f"/v1/users/{_id(into_user_id, 'into_user_id')}/merge", json=body), _one)


# -- collections -------------------------------------------------------------------------------------------------


def _collection(answer: Answer | None) -> Collection:
    return parse(Collection, expect_object(answer))


def list_collections() -> Operation[list[Collection]]:
    return _once(
        Call("GET", "/v1/collections"), lambda answer: [parse(Collection, item) for item in expect_list(answer)]
    )


def get_collection(name: str) -> Operation[Collection]:
    return _once(Call("GET", f"/v1/collections/{_name(name)}"), _collection)


def create_collection(name: str) -> Operation[Collection]:
    return _once(Call("POST", "/v1/collections", json={"name": _name(name)}), _collection)


def delete_collection(name: str) -> Operation[None]:
    return _once(Call("DELETE", f"/v1/collections/{_name(name)}", gone_is_done=True), lambda _: None)


# -- unknown faces -----------------------------------------------------------------------------------------------


def list_clusters(collection: str | None, limit: int) -> Operation[list[Cluster]]:
    """Every page, ``limit`` clusters a page."""
    params: dict[str, str | int | float] = {"limit": limit}
    if collection is not None:
        params["collection"] = _name(collection)
    clusters: list[Cluster] = []
    after = 0
    while True:
        page = parse(ClusterPage, expect_object((yield Call("GET", "/v1/clusters", params={**params, "after": after}))))
        clusters.extend(page.items)
        if page.next_after is None:
            return clusters
        if page.next_after <= after:  # a page that does not move forward would loop for ever
            raise InvalidResponse(f"next_after {page.next_after} after {after}")
        after = page.next_after


def name_cluster(
    cluster_id: int, user_id: int | None, email: str | None, full_name: str | None, idempotency_key: str | None
) -> Operation[NamedCluster]:
    if (user_id is None) == (email is None):
        raise ValueError("give exactly one of user_id (an existing person) or email (a new one)")
    if user_id is not None and full_name is not None:
        raise ValueError("full_name names a new person: give it with email, not with user_id")
    body = _given(user_id=None if user_id is None else _id(user_id, "user_id"), email=email, full_name=full_name)
    call = Call(
        "POST",
        f"/v1/clusters/{_id(cluster_id, 'cluster_id')}/name",
        json=body,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
    return _once(call, lambda a: parse(NamedCluster, expect_object(a)))


def dismiss_cluster(cluster_id: int) -> Operation[DismissedCluster]:
    return _once(
        Call("POST", f"/v1/clusters/{_id(cluster_id, 'cluster_id')}/dismiss"),
        lambda a: parse(DismissedCluster, expect_object(a)),
    )


def not_this_person(face_id: int) -> Operation[ReturnedFace]:
    return _once(
        Call("POST", f"/v1/faces/{_id(face_id, 'face_id')}/not-this-person"),
        lambda a: parse(ReturnedFace, expect_object(a)),
    )


def _policy(answer: Answer | None) -> UnknownFacesPolicy:
    return parse(UnknownFacesPolicy, expect_object(answer))


def unknown_faces_policy(collection: str) -> Operation[UnknownFacesPolicy]:
    return _once(Call("GET", f"/v1/collections/{_name(collection)}/unknown-faces"), _policy)


def set_unknown_faces_policy(
    collection: str, keep: bool | None, retention_hours: int | None
) -> Operation[UnknownFacesPolicy]:
    if keep is None and retention_hours is None:
        raise ValueError("give keep, retention_hours or both")
    if keep is not None and not isinstance(keep, bool):
        raise TypeError(f"keep must be a bool, got {type(keep).__name__}")
    body = _given(keep_unknown_faces=keep, unknown_retention_hours=retention_hours)
    return _once(Call("PATCH", f"/v1/collections/{_name(collection)}/unknown-faces", json=body), _policy)


# -- jobs --------------------------------------------------------------------------------------------------------


def _job(answer: Answer | None) -> Job:
    return parse_job(expect_object(answer))


def _submit(
    path: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    params: dict[str, Any],
    wait: float,
    idempotency_key: str | None,
) -> Operation[Job]:
    if wait < 0:
        raise ValueError("wait is seconds, 0 or more")
    query = _given(**params)
    if wait:
        query["wait"] = wait
    call = Call(
        "POST", path, params=query, files=files, idempotency_key=idempotency_key or new_idempotency_key(), wait=wait
    )
    return _once(call, _job)


def enroll(
    user_id: int,
    photo: Photo,
    filename: str | None,
    external_id: str | None,
    idempotency_key: str | None,
    wait: float,
    callback_url: str | None,
) -> Operation[Job]:
    return _submit(
        f"/v1/users/{_id(user_id, 'user_id')}/faces",
        [_photo_file("file", photo, filename)],
        {"external_id": external_id, "callback_url": callback_url},
        wait,
        idempotency_key,
    )


def search(
    photo: Photo,
    filename: str | None,
    collection: str | None,
    threshold: float | None,
    limit: int | None,
    wait: float,
    idempotency_key: str | None,
    callback_url: str | None,
) -> Operation[Job]:
    params = {"collection": collection, "threshold": threshold, "limit": limit, "callback_url": callback_url}
    return _submit("/v1/search", [_photo_file("file", photo, filename)], params, wait, idempotency_key)


def verify(
    photo: Photo,
    user_id: int | None,
    second_photo: Photo | None,
    filename: str | None,
    collection: str | None,
    threshold: float | None,
    wait: float,
    idempotency_key: str | None,
    callback_url: str | None,
) -> Operation[Job]:
    if (user_id is None) == (second_photo is None):
        raise ValueError("give exactly one of user_id or second_photo")
    files = [_photo_file("file", photo, filename)]
    if second_photo is not None:
        files.append(_photo_file("second_file", second_photo, None))
    params = {
        "user_id": None if user_id is None else _id(user_id, "user_id"),
        "collection": collection,
        "threshold": threshold,
        "callback_url": callback_url,
    }
    return _submit("/v1/verify", files, params, wait, idempotency_key)


def detect(
    photo: Photo,
    filename: str | None,
    collection: str | None,
    wait: float,
    idempotency_key: str | None,
    callback_url: str | None,
) -> Operation[Job]:
    params = {"collection": collection, "callback_url": callback_url}
    return _submit("/v1/detect", [_photo_file("file", photo, filename)], params, wait, idempotency_key)


def _job_call(job_id: str, wait: float) -> Call:
    if not isinstance(job_id, str) or not job_id:
        raise TypeError("job_id must be a non-empty str")
    params: dict[str, str | int | float] = {"wait": round(wait, 3)} if wait > 0 else {}
    return Call("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params, wait=wait)


def get_job(job_id: str) -> Operation[Job]:
    return _once(_job_call(job_id, 0), _job)


def wait_for_job(job_id: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> Operation[Job]:
    """Long polls (``?wait=``) until the job is done or failed; JobTimeout after ``timeout`` seconds. A server
    that answers before the wait asked for (its FECAPASS_MAX_WAIT_SECONDS is lower) is asked again after a
    pause that grows, so that it is not polled in a tight loop."""
    started = clock()
    deadline = started + timeout
    pause = POLL_INTERVAL_SECONDS
    while True:
        asked = min(LONG_POLL_SECONDS, max(0.0, deadline - clock()))
        sent = clock()
        job = _job((yield _job_call(job_id, asked)))
        if job.finished:
            return job
        now = clock()
        if now >= deadline:
            raise JobTimeout(job_id, job.state, now - started)
        if now - sent < asked:  # answered early: the server's cap, not the job, ended the wait
            yield Sleep(min(pause, deadline - now))
            pause = min(POLL_INTERVAL_CAP_SECONDS, pause * 2)


def me() -> Operation[Me]:
    return _once(Call("GET", "/v1/me"), lambda answer: parse(Me, expect_object(answer)))


def health() -> Operation[Health]:
    """Readiness: answered 503 (with the failing checks) when not ready, which is an answer here, not an error."""
    return _once(
        Call("GET", "/health/ready", answers=frozenset({503})), lambda answer: parse(Health, expect_object(answer))
    )


def _once(call: Call, read: Callable[[Answer | None], Any]) -> Operation[Any]:
    return read((yield call))
