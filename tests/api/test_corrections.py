"""Merge and move through the API, tried as a careless or hostile client would: repeats, a person merged into
themselves, ids nobody has, ids too large for the database, a read key, a key limited to another collection, two
people of different collections. Outcomes counted in PostgreSQL (faces per user, tombstones), the vector database,
the S3 bucket and the gallery feed, not from what the API answers."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from common.db.main_repository import NewFace
from schemas.gallery import EVERY_PACK, FEED, Change, FeedEntry
from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration

PACK = "corrections-api8"
TOO_LARGE = 2**63


def write(installation: Installation) -> dict[str, str]:
    return key(installation, "write")


def person(api: TestClient, installation: Installation, collection: str = "default") -> int:
    created = api.post(
        "/v1/users",
        json={"email": new_email("person"), "full_name": "Person", "collection": collection},
        headers=key(installation, "admin"),
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def served_face(installation: Installation, user_id: int, collection_id: int = 1) -> int:
    """A face as the index stage leaves it: row served, photo and crop in the bucket. No embedding: registering a
    pack in this shared installation would make it the active one for every later test (the integration tests
    count embeddings and codes)."""
    job_id = uuid.uuid4().hex
    image_key, crop_key = f"originals/{job_id}", f"crops/{job_id}/0.png"
    for object_key in (image_key, crop_key):
        installation.store.put(object_key, photo(), "image/jpeg")
    face_id = installation.main.add_face(
        NewFace(user_id, job_id, image_key, crop_key, (1, 2, 3, 4), 0.9, 1, PACK, collection_id=collection_id)
    )
    installation.main.serve_face(face_id, user_id, job_id)
    return face_id


def new_collection(api: TestClient, installation: Installation) -> tuple[str, int]:
    name = f"site-{uuid.uuid4().hex[:8]}"
    assert api.post("/v1/collections", json={"name": name}, headers=key(installation, "admin")).status_code == 201
    row = installation.main.collection_named(name)
    assert row is not None
    return name, row.id


def limited_key(installation: Installation, *collection_ids: int) -> dict[str, str]:
    return {"X-API-Key": installation.main.create_api_key("limited-write", "write", list(collection_ids)).key}


def sql(installation: Installation, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(installation.env["FECAPASS_MAIN_DB_DSN"]) as conn:
        return conn.execute(query, args).fetchall()


def faces_of(installation: Installation, *user_ids: int) -> list[list[int]]:
    """Face ids (served or not) of each user, from PostgreSQL."""
    return [
        [int(face_id) for (face_id,) in sql(installation, "SELECT id FROM faces WHERE user_id = %s ORDER BY id", u)]
        for u in user_ids
    ]


def stored_objects(installation: Installation, face_ids: list[int]) -> list[str]:
    keys = [
        k
        for (i, c) in sql(installation, "SELECT image_key, crop_key FROM faces WHERE id = ANY(%s)", face_ids)
        for k in (i, c)
    ]
    return sorted(k for k in keys if installation.store.keys(k) == [k])


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code and response.headers["content-type"] == "application/problem+json", body
    return body


# -- merge ------------------------------------------------------------------------------------------------------


def test_a_merge_moves_every_face_to_a_erases_b_and_its_repeat_changes_nothing(
    api: TestClient, installation: Installation
) -> None:
    a, b = person(api, installation), person(api, installation)
    of_a = [served_face(installation, a)]
    of_b = [served_face(installation, b) for _ in range(2)]
    objects = stored_objects(installation, of_a + of_b)
    assert len(objects) == 6

    with capture_logs() as logs:
        merged = api.post(f"/v1/users/{a}/merge", json={"from_user_id": b}, headers=write(installation))

    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == a and merged.json()["collection"] == "default" and merged.json()["is_active"]
    assert faces_of(installation, a, b) == [sorted(of_a + of_b), []]
    assert sql(installation, "SELECT id FROM users WHERE id = %s", b) == []
    assert sql(installation, "SELECT user_id FROM erased_users WHERE user_id = %s", b) == [(b,)]
    assert sql(installation, "SELECT merged_into FROM merged_users WHERE user_id = %s", b) == [(a,)]
    assert stored_objects(installation, of_a + of_b) == objects  # photos and crops kept
    listed = api.get(f"/v1/users/{a}/faces", headers=write(installation)).json()
    assert sorted(face["id"] for face in listed) == sorted(of_a + of_b) and {f["user_id"] for f in listed} == {a}
    problem(api.get(f"/v1/users/{b}", headers=write(installation)), 404, "user_not_found")
    [audit] = [line for line in logs if line["event"] == "corrections.users_merged"]
    assert (audit["user_id"], audit["from_user_id"], audit["face_ids"]) == (a, b, of_b)

    again = api.post(f"/v1/users/{a}/merge", json={"from_user_id": b}, headers=write(installation))
    assert again.status_code == 200 and again.json() == merged.json()
    assert faces_of(installation, a, b) == [sorted(of_a + of_b), []]
    assert sql(installation, "SELECT count(*) FROM merged_users WHERE user_id = %s", b) == [(1,)]
    assert stored_objects(installation, of_a + of_b) == objects


def test_merges_refused_leave_everyone_as_they_were(api: TestClient, installation: Installation) -> None:
    a, b, d = person(api, installation), person(api, installation), person(api, installation)
    faces = [served_face(installation, user) for user in (a, b, d)]
    site, site_id = new_collection(api, installation)
    elsewhere = person(api, installation, site)
    served_face(installation, elsewhere, site_id)
    before = faces_of(installation, a, b, d, elsewhere)
    headers = write(installation)

    detail = problem(
        api.post(f"/v1/users/{a}/merge", json={"from_user_id": a}, headers=headers), 422, "merge_into_itself"
    )
    assert str(a) in detail["detail"]
    detail = problem(
        api.post(f"/v1/users/{a}/merge", json={"from_user_id": 10**15}, headers=headers), 404, "user_not_found"
    )
    assert str(10**15) in detail["detail"]
    detail = problem(
        api.post(f"/v1/users/{10**15}/merge", json={"from_user_id": b}, headers=headers), 404, "user_not_found"
    )
    assert str(10**15) in detail["detail"]
    for body in ({"from_user_id": TOO_LARGE}, {"from_user_id": 0}, {"from_user_id": -b}, {"from_user_id": "b"}, {}):
        problem(api.post(f"/v1/users/{a}/merge", json=body, headers=headers), 422, "invalid_request")
    problem(api.post(f"/v1/users/{TOO_LARGE}/merge", json={"from_user_id": b}, headers=headers), 422, "invalid_request")
    problem(api.post(f"/v1/users/{a}/merge", content=b"{not json", headers=headers), 422, "invalid_request")
    read = key(installation, "read")
    problem(api.post(f"/v1/users/{a}/merge", json={"from_user_id": b}, headers=read), 403, "insufficient_scope")
    mismatch = api.post(f"/v1/users/{a}/merge", json={"from_user_id": elsewhere}, headers=headers)
    problem(mismatch, 409, "collection_mismatch")
    # A key of the other site sees neither default person; a key of the default collection not the site's person.
    site_key, default_key = limited_key(installation, site_id), limited_key(installation, 1)
    problem(api.post(f"/v1/users/{a}/merge", json={"from_user_id": b}, headers=site_key), 404, "user_not_found")
    problem(api.post(f"/v1/users/{elsewhere}/merge", json={"from_user_id": a}, headers=site_key), 404, "user_not_found")
    problem(
        api.post(f"/v1/users/{a}/merge", json={"from_user_id": elsewhere}, headers=default_key), 404, "user_not_found"
    )
    assert faces_of(installation, a, b, d, elsewhere) == before
    assert sql(installation, "SELECT count(*) FROM erased_users WHERE user_id = ANY(%s)", [a, b, d, elsewhere]) == [
        (0,)
    ]

    # Once B went into A, B is nobody for any other merge; into an inactive person nobody merges.
    assert api.post(f"/v1/users/{a}/merge", json={"from_user_id": b}, headers=headers).status_code == 200
    problem(api.post(f"/v1/users/{d}/merge", json={"from_user_id": b}, headers=headers), 404, "user_not_found")
    assert api.patch(f"/v1/users/{d}", json={"is_active": False}, headers=headers).status_code == 200
    problem(api.post(f"/v1/users/{d}/merge", json={"from_user_id": a}, headers=headers), 404, "user_not_found")
    assert faces_of(installation, a, d) == [sorted(faces[:2]), [faces[2]]]


# -- move -------------------------------------------------------------------------------------------------------


def test_a_face_moves_to_another_person_and_its_repeat_changes_nothing(
    api: TestClient, installation: Installation
) -> None:
    x, c = person(api, installation), person(api, installation)
    wrong, right = served_face(installation, x), served_face(installation, x)
    objects = stored_objects(installation, [wrong])

    with capture_logs() as logs:
        moved = api.post(f"/v1/faces/{wrong}/move", json={"user_id": c}, headers=write(installation))

    assert moved.status_code == 200, moved.text
    assert (moved.json()["id"], moved.json()["user_id"], moved.json()["collection"]) == (wrong, c, "default")
    assert faces_of(installation, x, c) == [[right], [wrong]]
    assert stored_objects(installation, [wrong]) == objects
    [audit] = [line for line in logs if line["event"] == "corrections.face_moved"]
    assert (audit["face_id"], audit["user_id"], audit["from_user_id"], audit["moved"]) == (wrong, c, x, True)

    again = api.post(f"/v1/faces/{wrong}/move", json={"user_id": c}, headers=write(installation))
    assert again.status_code == 200 and again.json()["user_id"] == c
    assert faces_of(installation, x, c) == [[right], [wrong]]


def test_moves_refused_leave_the_face_where_it_was(api: TestClient, installation: Installation) -> None:
    x, inactive = person(api, installation), person(api, installation)
    face = served_face(installation, x)
    site, site_id = new_collection(api, installation)
    elsewhere = person(api, installation, site)
    headers = write(installation)
    assert api.patch(f"/v1/users/{inactive}", json={"is_active": False}, headers=headers).status_code == 200

    problem(api.post(f"/v1/faces/{10**15}/move", json={"user_id": x}, headers=headers), 404, "face_not_found")
    problem(api.post(f"/v1/faces/{face}/move", json={"user_id": 10**15}, headers=headers), 404, "user_not_found")
    problem(api.post(f"/v1/faces/{face}/move", json={"user_id": inactive}, headers=headers), 404, "user_not_found")
    problem(
        api.post(f"/v1/faces/{face}/move", json={"user_id": elsewhere}, headers=headers), 409, "collection_mismatch"
    )
    for body in ({"user_id": TOO_LARGE}, {"user_id": 0}, {"user_id": None}, {}):
        problem(api.post(f"/v1/faces/{face}/move", json=body, headers=headers), 422, "invalid_request")
    problem(api.post(f"/v1/faces/{TOO_LARGE}/move", json={"user_id": x}, headers=headers), 422, "invalid_request")
    read = key(installation, "read")
    problem(api.post(f"/v1/faces/{face}/move", json={"user_id": inactive}, headers=read), 403, "insufficient_scope")
    site_key = limited_key(installation, site_id)
    problem(api.post(f"/v1/faces/{face}/move", json={"user_id": elsewhere}, headers=site_key), 404, "face_not_found")
    default_key = limited_key(installation, 1)
    problem(api.post(f"/v1/faces/{face}/move", json={"user_id": elsewhere}, headers=default_key), 404, "user_not_found")
    assert faces_of(installation, x, inactive, elsewhere) == [[face], [], []]


# -- erasures through the API announce what they remove ---------------------------------------------------------


def feed_end(installation: Installation) -> str:
    rows = installation.redis.xrevrange(FEED, count=1)
    return rows[0][0].decode() if rows else "0-0"


def test_erasures_through_the_api_publish_their_removals_on_the_gallery_feed(
    api: TestClient, installation: Installation
) -> None:
    x, y = person(api, installation), person(api, installation)
    lone = served_face(installation, x)
    of_y = [served_face(installation, y) for _ in range(2)]
    start = feed_end(installation)

    assert api.delete(f"/v1/faces/{lone}", headers=write(installation)).status_code == 204
    assert api.delete(f"/v1/users/{y}", headers=write(installation)).status_code == 204

    entries = [FeedEntry.from_fields(fields) for _, fields in installation.redis.xrange(FEED, min=f"({start}")]
    assert [(e.change, e.pack, e.face_ids, e.collection_id) for e in entries] == [
        (Change.REMOVE, EVERY_PACK, [lone], 1),
        (Change.REMOVE, EVERY_PACK, sorted(of_y), 1),
    ]
