"""Collections through the API, tried the way a client of another site would: a key limited to collection A learns
nothing of collection B (its people, faces, jobs, or that it exists), listings stay inside, external ids are unique
per collection, and erasing a collection leaves nothing of it in either database or the bucket. Counted from
PostgreSQL, Redis and the S3 bucket, not from what the API answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from fastapi.testclient import TestClient

from common import clients
from common.db.main_repository import NewFace
from common.db.vector_repository import VectorRepository
from common.objects import crop_key as crop_key_of
from common.objects import original_key
from schemas.jobs import job_key
from schemas.streams import JobMessage, Stage
from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration

PACK = "coll-api8"


@pytest.fixture(scope="module")
def vectors(installation: Installation) -> Iterator[VectorRepository]:
    with clients.vector_db_pool(installation.config().database) as pool:
        yield VectorRepository(pool)


@dataclass(frozen=True)
class Site:
    name: str
    id: int
    user_id: int
    face_id: int
    keys: list[str]  # the face's photo and crop in the bucket


def admin(installation: Installation) -> dict[str, str]:
    return key(installation, "admin")


def limited_key(installation: Installation, scope: str, *collection_ids: int) -> dict[str, str]:
    return {"X-API-Key": installation.main.create_api_key(f"limited-{scope}", scope, list(collection_ids)).key}


def served_face(installation: Installation, vectors: VectorRepository, user_id: int, collection_id: int) -> Site:
    """A face as the index stage leaves it: row served, embedding, photo and crop in the bucket."""
    job_id = uuid.uuid4().hex
    image_key, crop_key = original_key(job_id), crop_key_of(job_id, 0)
    for object_key in (image_key, crop_key):
        installation.store.put(object_key, photo(), "image/jpeg")
    face_id = installation.main.add_face(
        NewFace(user_id, job_id, image_key, crop_key, (1, 2, 3, 4), 0.9, 1, PACK, collection_id=collection_id)
    )
    # Plain SQL: the repository's add_embedding would register PACK, and the first pack registered becomes the
    # active pack of this installation's other tests.
    with psycopg.connect(installation.env["FECAPASS_VECTOR_DB_DSN"]) as conn:
        conn.execute(
            "INSERT INTO face_embeddings (face_id, model_pack, embedding, collection_id) VALUES (%s, %s, %s, %s)",
            (face_id, PACK, str([0.5] * 4), collection_id),
        )
    installation.main.serve_face(face_id, user_id, job_id)
    row = installation.main.get_collection(collection_id)
    assert row is not None
    return Site(row.name, collection_id, user_id, face_id, [image_key, crop_key])


def new_site(api: TestClient, installation: Installation, vectors: VectorRepository) -> Site:
    name = f"site-{uuid.uuid4().hex[:8]}"
    created = api.post("/v1/collections", json={"name": name}, headers=admin(installation))
    assert created.status_code == 201, created.text
    person = api.post(
        "/v1/users",
        json={"email": new_email("person"), "full_name": "P", "collection": name},
        headers=admin(installation),
    )
    assert person.status_code == 201 and person.json()["collection"] == name, person.text
    row = installation.main.collection_named(name)
    assert row is not None
    return served_face(installation, vectors, int(person.json()["id"]), row.id)


def test_collections_are_created_listed_and_named_exactly(api: TestClient, installation: Installation) -> None:
    name = f"site-{uuid.uuid4().hex[:8]}"
    created = api.post("/v1/collections", json={"name": name}, headers=admin(installation))
    assert created.status_code == 201 and created.json()["name"] == name
    again = api.post("/v1/collections", json={"name": name}, headers=admin(installation))
    assert again.status_code == 409 and again.json()["code"] == "collection_exists"
    for bad in ("Upper", "-dash", "a" * 64, "sp ace", ""):
        refused = api.post("/v1/collections", json={"name": bad}, headers=admin(installation))
        assert refused.status_code == 422, bad
    assert api.post("/v1/collections", json={"name": "x-y"}, headers=key(installation, "write")).status_code == 403
    names = [row["name"] for row in api.get("/v1/collections", headers=key(installation, "read")).json()]
    assert "default" in names and name in names
    assert api.get(f"/v1/collections/{name}", headers=key(installation, "read")).json()["name"] == name
    missing = api.get("/v1/collections/no-such-site", headers=key(installation, "read"))
    assert missing.status_code == 404 and missing.json()["code"] == "collection_not_found"
    listed = api.get("/v1/users", params={"collection": "no-such-site"}, headers=key(installation, "read"))
    assert listed.status_code == 404 and listed.json()["code"] == "collection_not_found"


def test_a_key_limited_to_a_collection_learns_nothing_of_another(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    mine = limited_key(installation, "write", a.id)
    # Its own collection works as for any key.
    assert api.get("/v1/me", headers=mine).json() == {"scope": "write", "collections": [a.name]}
    assert [row["name"] for row in api.get("/v1/collections", headers=mine).json()] == [a.name]
    own = api.get("/v1/users", params={"collection": a.name}, headers=mine).json()["items"]
    assert [user["id"] for user in own] == [a.user_id]
    assert api.get(f"/v1/faces/{a.face_id}", headers=mine).json()["collection"] == a.name
    # The other collection, its person and face answer exactly as things that do not exist.
    for response, code in (
        (api.get(f"/v1/collections/{b.name}", headers=mine), "collection_not_found"),
        (api.get("/v1/users", params={"collection": b.name}, headers=mine), "collection_not_found"),
        (api.get("/v1/users", headers=mine), "collection_not_found"),  # default is another collection too
        (api.get(f"/v1/users/{b.user_id}", headers=mine), "user_not_found"),
        (api.get(f"/v1/users/{b.user_id}/faces", headers=mine), "user_not_found"),
        (api.patch(f"/v1/users/{b.user_id}", json={"full_name": "taken over"}, headers=mine), "user_not_found"),
        (api.delete(f"/v1/users/{b.user_id}", headers=mine), "user_not_found"),
        (api.get(f"/v1/faces/{b.face_id}", headers=mine), "face_not_found"),
        (api.delete(f"/v1/faces/{b.face_id}", headers=mine), "face_not_found"),
        (api.delete(f"/v1/collections/{b.name}", headers=mine), "insufficient_scope"),  # a write key
    ):
        assert response.status_code in (403, 404) and response.json()["code"] == code, response.text
        assert b.name not in response.text or code == "collection_not_found"
    unknown_user = api.get("/v1/users/999999999", headers=mine).json()
    hidden_user = api.get(f"/v1/users/{b.user_id}", headers=mine).json()
    assert {k: v for k, v in unknown_user.items() if k != "detail"} == {
        k: v for k, v in hidden_user.items() if k != "detail"
    }
    before = installation.submitted()
    for response in (
        api.post(f"/v1/users/{b.user_id}/faces", files={"file": ("a.jpg", photo())}, headers=mine),
        api.post("/v1/search", params={"collection": b.name}, files={"file": ("a.jpg", photo())}, headers=mine),
        api.post("/v1/detect", params={"collection": b.name}, files={"file": ("a.jpg", photo())}, headers=mine),
        # A verify in its own collection cannot compare with a person of the other one.
        api.post(
            "/v1/verify",
            params={"user_id": b.user_id, "collection": a.name},
            files={"file": ("a.jpg", photo())},
            headers=mine,
        ),
        api.post("/v1/users", json={"email": new_email("intruder"), "collection": b.name}, headers=mine),
    ):
        assert response.status_code == 404, response.text
    assert installation.submitted() == before
    # Nothing of b changed in PostgreSQL.
    user = installation.main.get_user(b.user_id)
    assert user is not None and user.full_name == "P" and user.is_active
    assert installation.main.get_face(b.face_id) is not None
    assert installation.main.list_users(0, 100, collection_id=b.id) == [user]


def test_a_limited_key_reads_only_the_jobs_of_its_collections(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    mine = limited_key(installation, "read", a.id)
    theirs = api.post(
        "/v1/search", params={"collection": b.name}, files={"file": ("a.jpg", photo())}, headers=admin(installation)
    )
    assert theirs.status_code == 202, theirs.text
    job_id = theirs.json()["job_id"]
    assert installation.redis.hget(job_key(job_id), "collection_id") == str(b.id).encode()
    # The entry the stages read searches b's gallery.
    [(_, fields)] = installation.redis.xrevrange(Stage.DETECT.stream, count=1)
    assert JobMessage.from_fields(fields).collection_id == b.id
    hidden = api.get(f"/v1/jobs/{job_id}", headers=mine)
    assert hidden.status_code == 404 and hidden.json()["code"] == "job_not_found"
    assert api.get(f"/v1/jobs/{job_id}", headers=key(installation, "read")).status_code == 200
    own = api.post("/v1/search", params={"collection": a.name}, files={"file": ("a.jpg", photo())}, headers=mine)
    assert own.status_code == 202
    assert api.get(f"/v1/jobs/{own.json()['job_id']}", headers=mine).json()["state"] == "queued"
    # A job of the default collection (every job before collections: no collection_id in its hash) is default's.
    legacy = api.post("/v1/detect", files={"file": ("a.jpg", photo())}, headers=key(installation, "read")).json()
    installation.redis.hdel(job_key(legacy["job_id"]), "collection_id")
    assert api.get(f"/v1/jobs/{legacy['job_id']}", headers=mine).status_code == 404
    of_default = limited_key(installation, "read", 1)
    assert api.get(f"/v1/jobs/{legacy['job_id']}", headers=of_default).status_code == 200


def test_keys_limited_to_collections(api: TestClient, installation: Installation, vectors: VectorRepository) -> None:
    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    made = api.post(
        "/v1/keys", json={"name": "site a", "scope": "write", "collections": [a.name]}, headers=admin(installation)
    )
    assert made.status_code == 201 and made.json()["collections"] == [a.name]
    stored = [row for row in installation.main.list_api_keys() if row.id == made.json()["id"]]
    assert stored[0].collection_ids == [a.id]
    unknown = api.post(
        "/v1/keys", json={"name": "x", "scope": "read", "collections": ["no-such-site"]}, headers=admin(installation)
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "collection_not_found"
    # An admin key of site a cannot escape it: no unlimited key, no key of b, only a's keys listed and revoked.
    site_admin = limited_key(installation, "admin", a.id)
    keys_before = len(installation.main.list_api_keys())
    escape = api.post("/v1/keys", json={"name": "escape", "scope": "admin"}, headers=site_admin)
    assert escape.status_code == 403 and escape.json()["code"] == "insufficient_scope"
    other = api.post("/v1/keys", json={"name": "b", "scope": "read", "collections": [b.name]}, headers=site_admin)
    assert other.status_code == 404 and other.json()["code"] == "collection_not_found"
    assert (
        api.post("/v1/collections", json={"name": f"x-{uuid.uuid4().hex[:6]}"}, headers=site_admin).status_code == 403
    )
    assert len(installation.main.list_api_keys()) == keys_before
    listed = api.get("/v1/keys", headers=site_admin).json()
    assert listed and all(row["collections"] == [a.name] for row in listed)
    everyone = next(
        row for row in installation.main.list_api_keys() if row.collection_ids is None and row.revoked_at is None
    )
    refused = api.delete(f"/v1/keys/{everyone.id}", headers=site_admin)
    assert refused.status_code == 404 and refused.json()["code"] == "key_not_found"
    assert next(row for row in installation.main.list_api_keys() if row.id == everyone.id).revoked_at is None
    own = api.post("/v1/keys", json={"name": "a2", "scope": "read", "collections": [a.name]}, headers=site_admin)
    assert own.status_code == 201
    assert api.delete(f"/v1/keys/{own.json()['id']}", headers=site_admin).status_code == 204


def test_users_carry_collection_and_external_id_unique_per_collection(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    write = key(installation, "write")
    email = new_email("twin")
    body = {"email": email, "full_name": "Ann", "collection": a.name, "external_id": "HR-1"}
    ann = api.post("/v1/users", json=body, headers=write)
    assert ann.status_code == 201 and (ann.json()["collection"], ann.json()["external_id"]) == (a.name, "HR-1")
    clash = api.post("/v1/users", json={**body, "email": new_email("other")}, headers=write)
    assert clash.status_code == 409 and clash.json()["code"] == "external_id_taken"
    same_email = api.post("/v1/users", json={**body, "external_id": None}, headers=write)
    assert same_email.status_code == 409 and same_email.json()["code"] == "email_taken"
    at_b = api.post("/v1/users", json={**body, "collection": b.name}, headers=write)
    assert at_b.status_code == 201  # the same address and id at another site: another person
    by_email = api.get("/v1/users", params={"collection": a.name, "email": email.upper()}, headers=write).json()
    assert [user["id"] for user in by_email["items"]] == [ann.json()["id"]]
    by_id = api.get("/v1/users", params={"collection": b.name, "external_id": "HR-1"}, headers=write).json()
    assert [user["id"] for user in by_id["items"]] == [at_b.json()["id"]]
    assert api.get("/v1/users", params={"collection": a.name, "external_id": "HR"}, headers=write).json()["items"] == []
    default_user = api.post("/v1/users", json={"email": new_email("plain")}, headers=write).json()
    assert (default_user["collection"], default_user["external_id"]) == ("default", None)
    # PATCH sets the id, refuses another person's, and null removes it.
    other = api.post("/v1/users", json={"email": new_email("bob"), "collection": a.name}, headers=write).json()
    taken = api.patch(f"/v1/users/{other['id']}", json={"external_id": "HR-1"}, headers=write)
    assert taken.status_code == 409 and taken.json()["code"] == "external_id_taken"
    assert (
        api.patch(f"/v1/users/{other['id']}", json={"external_id": "HR-2"}, headers=write).json()["external_id"]
        == "HR-2"
    )
    assert (
        api.patch(f"/v1/users/{other['id']}", json={"full_name": "Bob"}, headers=write).json()["external_id"] == "HR-2"
    )
    cleared = api.patch(f"/v1/users/{other['id']}", json={"external_id": None}, headers=write)
    assert cleared.json()["external_id"] is None
    stored = installation.main.get_user(other["id"])
    assert stored is not None and stored.external_id is None and stored.collection_id == a.id


def test_an_enrolls_face_external_id_is_unique_in_the_collection(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    a = new_site(api, installation, vectors)
    write = key(installation, "write")
    installation.main.list_faces(a.user_id)
    with installation.main.pool.connection() as conn:  # the served face of the site takes an external id
        conn.execute("UPDATE faces SET external_id = 'photo-7' WHERE id = %s", (a.face_id,))
    assert api.get(f"/v1/faces/{a.face_id}", headers=write).json()["external_id"] == "photo-7"
    before = installation.submitted()
    taken = api.post(
        f"/v1/users/{a.user_id}/faces",
        params={"external_id": "photo-7"},
        files={"file": ("a.jpg", photo())},
        headers=write,
    )
    assert taken.status_code == 409 and taken.json()["code"] == "face_external_id_taken"
    assert installation.submitted() == before
    fresh = api.post(
        f"/v1/users/{a.user_id}/faces",
        params={"external_id": "photo-8"},
        files={"file": ("a.jpg", photo())},
        headers=write,
    )
    assert fresh.status_code == 202, fresh.text
    [(_, fields)] = installation.redis.xrevrange(Stage.DETECT.stream, count=1)
    queued = JobMessage.from_fields(fields)
    assert (queued.job_id, queued.collection_id, queued.external_id) == (fresh.json()["job_id"], a.id, "photo-8")


def test_an_enroll_asks_whose_external_id_only_of_a_person_the_key_sees(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    """The user and the external id are checked in one query: a person the key cannot see, a deactivated one, an
    unknown id answer 404 whether or not the external id is taken (a 409 would tell a key of another site that the
    person exists and has that photo), and an id taken in another collection is free in this one."""
    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    with installation.main.pool.connection() as conn:
        conn.execute("UPDATE faces SET external_id = 'taken-1' WHERE id = %s", (a.face_id,))
    asleep = api.post(
        "/v1/users",
        json={"email": new_email("asleep"), "full_name": "Asleep", "collection": a.name},
        headers=admin(installation),
    ).json()["id"]
    installation.main.deactivate_user(asleep)
    before = installation.submitted()

    def enroll(user_id: int, headers: dict[str, str], external_id: str = "taken-1") -> tuple[int, str]:
        answer = api.post(
            f"/v1/users/{user_id}/faces",
            params={"external_id": external_id},
            files={"file": ("a.jpg", photo())},
            headers=headers,
        )
        return answer.status_code, answer.json().get("code", "")

    of_b = limited_key(installation, "write", b.id)
    assert enroll(a.user_id, of_b) == (404, "user_not_found")
    assert enroll(asleep, key(installation, "write")) == (404, "user_not_found")
    assert enroll(10**12, key(installation, "write")) == (404, "user_not_found")
    assert enroll(a.user_id, key(installation, "write")) == (409, "face_external_id_taken")
    assert installation.submitted() == before  # nothing queued for any of them
    assert enroll(b.user_id, of_b)[0] == 202  # taken in a, free in b
    after = installation.submitted()
    assert after[1] - before[1] == 1 and after[0] > before[0]  # one job queued, its photo stored


def test_erasing_a_collection_leaves_nothing_of_it(
    api: TestClient, installation: Installation, vectors: VectorRepository
) -> None:
    a, keep = new_site(api, installation, vectors), new_site(api, installation, vectors)
    second = served_face(installation, vectors, a.user_id, a.id)
    other_person = api.post(
        "/v1/users", json={"email": new_email("p2"), "collection": a.name}, headers=admin(installation)
    ).json()
    third = served_face(installation, vectors, other_person["id"], a.id)
    site_key = limited_key(installation, "read", a.id)
    assert api.delete(f"/v1/collections/{a.name}", headers=key(installation, "write")).status_code == 403
    assert api.delete(f"/v1/collections/{a.name}", headers=admin(installation)).status_code == 204
    # PostgreSQL (both databases), the bucket: nothing of the collection.
    assert installation.main.get_collection(a.id) is None
    assert installation.main.list_users(0, 100, collection_id=a.id) == []
    with installation.main.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM faces WHERE collection_id = %s", (a.id,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users WHERE collection_id = %s", (a.id,)).fetchone() == (0,)
    assert vectors.count_in_collection(a.id) == 0
    for object_key in [*a.keys, *second.keys, *third.keys]:
        assert installation.store.keys(object_key) == [], object_key
    # The other collection is untouched; the site's key now sees nothing (not everything).
    assert installation.main.get_face(keep.face_id) is not None and vectors.count_in_collection(keep.id) == 1
    assert all(installation.store.keys(object_key) for object_key in keep.keys)
    assert api.get(f"/v1/collections/{a.name}", headers=admin(installation)).json()["code"] == "collection_not_found"
    assert api.delete(f"/v1/collections/{a.name}", headers=admin(installation)).status_code == 404
    assert api.get("/v1/collections", headers=site_key).json() == []
    assert api.get("/v1/users", headers=site_key).json()["code"] == "collection_not_found"


def test_the_cli_creates_keys_limited_to_collections(
    api: TestClient, installation: Installation, vectors: VectorRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operations.cli import main as fecapass

    a, b = new_site(api, installation, vectors), new_site(api, installation, vectors)
    for name, value in installation.env.items():
        monkeypatch.setenv(name, value)
    label = f"cli-site-{uuid.uuid4().hex[:6]}"
    fecapass(["keys", "create", "--name", label, "--scope", "read", "--collection", a.name, "--collection", b.name])
    [made] = [row for row in installation.main.list_api_keys() if row.name == label]
    assert sorted(made.collection_ids or []) == sorted([a.id, b.id])
    with pytest.raises(SystemExit, match="no such collection: no-such-site"):
        fecapass(["keys", "create", "--name", "x", "--scope", "read", "--collection", "no-such-site"])
    assert not [row for row in installation.main.list_api_keys() if row.name == "x"]
