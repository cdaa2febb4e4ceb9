"""Unknown faces through the API: a collection's policy, clusters listed with sample crops, naming, dismissing,
"not this person", with their scopes and errors. The faces are kept as the index stage keeps them (no stage runs
here: tests/integration/test_unknown_faces.py drives the stage itself)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common import clients
from common.db.main_repository import NewFace
from common.db.unknown_faces import UnknownFaces, UnseenFace
from common.db.vector_repository import VectorRepository
from common.objects import crop_key
from common.settings import DatabaseSettings
from tests.api.conftest import Installation, key, new_email

pytestmark = pytest.mark.integration

PACK, DIM = "unknownapi32", 32


@pytest.fixture(scope="module")
def unknown(installation: Installation) -> Iterator[UnknownFaces]:
    settings = DatabaseSettings(
        main_db_dsn=installation.env["FECAPASS_MAIN_DB_DSN"], vector_db_dsn=installation.env["FECAPASS_VECTOR_DB_DSN"]
    )
    with clients.vector_db_pool(settings) as pool:
        yield UnknownFaces(installation.main, VectorRepository(pool), installation.store)


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def new_collection(installation: Installation) -> tuple[int, str]:
    row = installation.main.create_collection(f"api-{uuid.uuid4().hex[:10]}")
    return row.id, row.name


def a_cluster(installation: Installation, unknown: UnknownFaces, collection_id: int, faces: int = 5) -> int:
    """A cluster of ``faces`` unknown faces of one person, kept from as many searches."""
    rng = np.random.default_rng(collection_id)
    person = unit(rng.standard_normal(DIM))
    for _ in range(faces):
        job_id = uuid.uuid4().hex
        installation.store.put(crop_key(job_id, 0), b"crop of " + job_id.encode())
        embedding = unit(person + 0.3 * unit(rng.standard_normal(DIM)))
        unknown.keep(
            collection_id, job_id, PACK, [UnseenFace(0, crop_key(job_id, 0), [1, 2, 3, 4], 0.9, embedding, 112)], 24
        )
    clusters = installation.main.list_clusters(collection_id, 0, 10, 4)
    assert len(clusters) == 1 and clusters[0].faces == faces
    return clusters[0].id


def test_a_collection_policy_is_read_by_any_key_and_changed_by_admin_keys(
    api: TestClient, installation: Installation
) -> None:
    collection_id, name = new_collection(installation)
    url = f"/v1/collections/{name}/unknown-faces"
    read = api.get(url, headers=key(installation, "read"))
    assert read.status_code == 200
    assert read.json() == {"collection": name, "keep_unknown_faces": False, "unknown_retention_hours": 720}
    body = {"keep_unknown_faces": True, "unknown_retention_hours": 48}
    assert api.patch(url, json=body, headers=key(installation, "write")).status_code == 403
    changed = api.patch(url, json=body, headers=key(installation, "admin"))
    assert changed.status_code == 200 and changed.json()["keep_unknown_faces"] is True
    policy = installation.main.get_collection(collection_id)
    assert policy is not None and policy.keep_unknown_faces and policy.unknown_retention_hours == 48
    for wrong in ({"unknown_retention_hours": 0}, {"keep_unknown_faces": "yes"}, {"retention": 5}):
        refused = api.patch(url, json=wrong, headers=key(installation, "admin"))
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", wrong
    missing = api.get("/v1/collections/no-such-collection/unknown-faces", headers=key(installation, "read"))
    assert missing.status_code == 404 and missing.json()["code"] == "collection_not_found"


def test_clusters_are_listed_with_sample_crops_and_named_once(
    api: TestClient, installation: Installation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(installation)
    cluster_id = a_cluster(installation, unknown, collection_id)
    listed = api.get("/v1/clusters", params={"collection": name}, headers=key(installation, "read"))
    assert listed.status_code == 200, listed.text
    (cluster,) = listed.json()["items"]
    assert cluster["id"] == cluster_id and cluster["faces"] == 5 and cluster["collection"] == name
    assert len(cluster["samples"]) == 4 and all("unknown/" in s["crop_url"] for s in cluster["samples"])
    write = key(installation, "write")
    url = f"/v1/clusters/{cluster_id}/name"
    assert api.post(url, json={"email": new_email("x")}, headers=key(installation, "read")).status_code == 403
    both = api.post(url, json={"user_id": 1, "email": new_email("x")}, headers=write)
    assert both.status_code == 422 and both.json()["code"] == "invalid_request"
    assert api.post(url, json={}, headers=write).status_code == 422
    email = new_email("named")
    named = api.post(url, json={"email": email, "full_name": "Named"}, headers=write)
    assert named.status_code == 200, named.text
    assert named.json() == {
        "cluster_id": cluster_id,
        "user_id": named.json()["user_id"],
        "user_created": True,
        "faces_added": 5,
        "faces_left_out": 0,
    }
    user_id = named.json()["user_id"]
    stored = installation.main.get_user(user_id)
    assert stored is not None and stored.collection_id == collection_id and stored.email == email
    assert len(installation.main.list_faces(user_id)) == 5
    # Again as the same person: the same end state.
    again = api.post(url, json={"email": email.upper(), "full_name": "Named"}, headers=write)
    assert again.status_code == 200 and again.json()["user_id"] == user_id and again.json()["faces_added"] == 0
    assert len(installation.main.list_faces(user_id)) == 5
    other = api.post(url, json={"email": new_email("other")}, headers=write)
    assert other.status_code == 409 and other.json()["code"] == "cluster_taken"
    dismissed = api.post(f"/v1/clusters/{cluster_id}/dismiss", headers=write)
    assert dismissed.status_code == 409 and dismissed.json()["code"] == "cluster_taken"
    assert api.get("/v1/clusters", params={"collection": name}, headers=write).json()["items"] == []
    gone = api.post("/v1/clusters/999999999/name", json={"email": new_email("x")}, headers=write)
    assert gone.status_code == 404 and gone.json()["code"] == "cluster_not_found"


def test_naming_as_a_person_of_another_collection_or_a_taken_email_is_refused(
    api: TestClient, installation: Installation, unknown: UnknownFaces
) -> None:
    collection_id, _ = new_collection(installation)
    cluster_id = a_cluster(installation, unknown, collection_id, faces=3)
    elsewhere = installation.main.create_user(new_email("elsewhere"), "Default collection")
    write = key(installation, "write")
    url = f"/v1/clusters/{cluster_id}/name"
    refused = api.post(url, json={"user_id": elsewhere.id}, headers=write)
    assert refused.status_code == 404 and refused.json()["code"] == "user_not_found"
    here = installation.main.create_user(new_email("here"), "Here", collection_id)
    taken = api.post(url, json={"email": here.email}, headers=write)
    assert taken.status_code == 409 and taken.json()["code"] == "email_taken"
    assert len(installation.main.list_faces(here.id)) == 0
    joined = api.post(url, json={"user_id": here.id}, headers={**write, "Idempotency-Key": uuid.uuid4().hex})
    assert joined.status_code == 200 and joined.json()["user_created"] is False
    assert len(installation.main.list_faces(here.id)) == 3


def test_a_dismissed_cluster_is_erased(api: TestClient, installation: Installation, unknown: UnknownFaces) -> None:
    collection_id, _ = new_collection(installation)
    cluster_id = a_cluster(installation, unknown, collection_id, faces=3)
    crops = [row.crop_key for row in installation.main.collection_unknown_faces(collection_id)]
    assert all(installation.store.keys(key_) for key_ in crops)
    assert api.post(f"/v1/clusters/{cluster_id}/dismiss", headers=key(installation, "read")).status_code == 403
    first = api.post(f"/v1/clusters/{cluster_id}/dismiss", headers=key(installation, "write"))
    assert first.status_code == 200 and first.json() == {"cluster_id": cluster_id, "faces_erased": 3}
    assert installation.main.collection_unknown_faces(collection_id) == []
    assert not any(installation.store.keys(key_) for key_ in crops)
    second = api.post(f"/v1/clusters/{cluster_id}/dismiss", headers=key(installation, "write"))
    assert second.status_code == 200 and second.json()["faces_erased"] == 0


def test_not_this_person_needs_a_write_key_and_an_existing_face(api: TestClient, installation: Installation) -> None:
    assert api.post("/v1/faces/999999999/not-this-person", headers=key(installation, "read")).status_code == 403
    missing = api.post("/v1/faces/999999999/not-this-person", headers=key(installation, "write"))
    assert missing.status_code == 404 and missing.json()["code"] == "face_not_found"


def test_a_key_limited_to_other_collections_learns_nothing_of_these_clusters(
    api: TestClient, installation: Installation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(installation)
    cluster_id = a_cluster(installation, unknown, collection_id, faces=3)
    other_id, _ = new_collection(installation)
    limited = {"X-API-Key": installation.main.create_api_key("limited", "admin", [other_id]).key}
    listed = api.get("/v1/clusters", params={"collection": name}, headers=limited)
    assert listed.status_code == 404 and listed.json()["code"] == "collection_not_found"
    policy = api.patch(f"/v1/collections/{name}/unknown-faces", json={"keep_unknown_faces": True}, headers=limited)
    assert policy.status_code == 404 and policy.json()["code"] == "collection_not_found"
    for action, body in (("name", {"email": new_email("x")}), ("dismiss", None)):
        refused = api.post(f"/v1/clusters/{cluster_id}/{action}", json=body, headers=limited)
        assert refused.status_code == 404 and refused.json()["code"] == "cluster_not_found", action
    assert installation.main.list_clusters(collection_id, 0, 10, 4)[0].faces == 3


def test_not_this_person_answers_404_outside_the_keys_collections_and_the_same_when_repeated(
    api: TestClient, installation: Installation
) -> None:
    collection_id, _ = new_collection(installation)
    user = installation.main.create_user(new_email("owner"), "Owner", collection_id)
    job_id = uuid.uuid4().hex
    installation.store.put(crop_key(job_id, 0), b"crop")
    # No embedding: registering a pack here would make it the shared installation's active one.
    face = NewFace(
        user.id, job_id, f"originals/{job_id}", crop_key(job_id, 0), (1, 2, 3, 4), 0.9, 1, PACK, collection_id
    )
    face_id = installation.main.add_face(face)
    installation.main.serve_face(face_id, user.id, job_id)
    other_id, _ = new_collection(installation)
    limited = {"X-API-Key": installation.main.create_api_key("limited-w", "write", [other_id]).key}
    url = f"/v1/faces/{face_id}/not-this-person"
    refused = api.post(url, headers=limited)
    assert refused.status_code == 404 and refused.json()["code"] == "face_not_found"
    assert installation.main.get_face(face_id) is not None
    first = api.post(url, headers=key(installation, "write"))
    assert first.status_code == 200, first.text
    assert first.json()["user_id"] == user.id and first.json()["face_id"] == face_id
    assert installation.main.get_face(face_id) is None and installation.main.list_faces(user.id) == []
    again = api.post(url, headers=key(installation, "write"))
    assert again.status_code == 200 and again.json() == first.json()
    assert api.post(url, headers=limited).status_code == 404  # now in the unknown pool: still not theirs to see
