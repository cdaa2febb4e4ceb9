"""Unknown faces through the whole product, with a real pack: searches of a person nobody enrolled are kept and
clustered, naming the cluster makes the person found by the next search, and "not this person" is visible in the
next search. The default collection keeps unknown faces for this test only (and is cleaned after it)."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import pytest

from common import clients
from common.db.main_repository import DEFAULT_COLLECTION_ID, MainRepository
from common.db.unknown_faces import UnknownFaces
from common.db.vector_repository import VectorRepository
from common.objects import ObjectStore
from common.settings import DatabaseSettings
from operations.calibrate import PAD_FRACTION
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from tests.e2e.conftest import RunningPipeline, create_key
from tests.shared_data import LFW

pytestmark = pytest.mark.e2e

PERSON = "Tony_Blair"  # not among the photos of ../shared/faces/basic that the other e2e tests enroll


def padded_photo(file: str) -> bytes:
    """The LFW crop padded as for calibration: the detector finds no face in the tight crop itself."""
    image = cv2.imread(str(LFW / "images" / file))
    pad = int(image.shape[1] * PAD_FRACTION)
    ok, encoded = cv2.imencode(".jpg", cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT))
    assert ok
    return bytes(encoded)


def search(client: httpx.Client, file: str) -> dict[str, Any]:
    response = client.post("/v1/search", files={"file": (file, padded_photo(file))}, params={"wait": 60})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "done", job
    return dict(job)


def matched(job: dict[str, Any]) -> list[dict[str, Any]]:
    (face,) = job["result"]["faces"]
    return list(face["matches"])


@pytest.fixture
def keeping(pipeline: RunningPipeline, services: LocalServices, object_store: ObjectStore) -> Iterator[None]:
    """The default collection keeps unknown faces during the test; afterwards every unknown face is erased."""
    admin = {"X-API-Key": create_key(services, "admin")}
    url = "/v1/collections/default/unknown-faces"
    with httpx.Client(base_url=pipeline.base_url, timeout=30, headers=admin) as client:
        assert client.patch(url, json={"keep_unknown_faces": True}).status_code == 200
        try:
            yield
        finally:
            assert client.patch(url, json={"keep_unknown_faces": False}).status_code == 200
            settings = DatabaseSettings(main_db_dsn=services.dsn(MAIN_DB), vector_db_dsn=services.dsn(VECTOR_DB))
            with clients.vector_db_pool(settings) as pool:
                unknown = UnknownFaces(MainRepository.at(services.dsn(MAIN_DB)), VectorRepository(pool), object_store)
                unknown.erase_collection(DEFAULT_COLLECTION_ID)


def test_a_named_cluster_is_found_by_the_next_search_and_not_this_person_by_the_one_after(
    pipeline: RunningPipeline, keeping: None
) -> None:
    if not (LFW / "identities.csv").is_file():
        pytest.skip(f"LFW photos not found at {LFW}")
    with (LFW / "identities.csv").open() as handle:
        files = sorted(row["file"] for row in csv.DictReader(handle) if row["identity"] == PERSON)
    kept, held_back = files[:6], files[6]
    with pipeline.client() as client:
        jobs = {file: search(client, file) for file in kept}
        # Nobody is enrolled for him: his faces match nobody (the other tests' people, rarely and falsely, might).
        unmatched = [file for file, job in jobs.items() if not matched(job)]
        assert len(unmatched) >= 4, jobs
        clusters = client.get("/v1/clusters", params={"collection": "default"}).json()["items"]
        assert len(clusters) == 1, clusters
        (cluster,) = clusters
        assert cluster["faces"] >= 3 and cluster["samples"]
        search(client, held_back)  # kept too, unless it matched someone
        before = client.get("/v1/clusters", params={"collection": "default"}).json()["items"][0]["faces"]
        named = client.post(
            f"/v1/clusters/{cluster['id']}/name",
            json={"email": f"tony.{uuid.uuid4().hex[:8]}@example.com", "full_name": "Tony Blair"},
        )
        assert named.status_code == 200, named.text
        user_id = named.json()["user_id"]
        faces = client.get(f"/v1/users/{user_id}/faces").json()
        assert len(faces) == named.json()["faces_added"] == before
        # The next search finds him.
        assert user_id in {match["user_id"] for match in matched(search(client, held_back))}
        # One of his faces, found by its own photo, is marked "not this person": the next search of that photo
        # no longer returns that face.
        photo = unmatched[0]
        (best, *_) = matched(search(client, photo))
        assert best["user_id"] == user_id and best["face_id"] in {face["id"] for face in faces}
        returned = client.post(f"/v1/faces/{best['face_id']}/not-this-person")
        assert returned.status_code == 200, returned.text
        assert returned.json()["user_id"] == user_id
        assert best["face_id"] not in {match["face_id"] for match in matched(search(client, photo))}
        assert len(client.get(f"/v1/users/{user_id}/faces").json()) == len(faces) - 1
        assert client.delete(f"/v1/users/{user_id}").status_code == 204
