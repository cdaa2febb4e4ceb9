"""Collections through the whole pipeline with a real model: a person enrolled at one site is found by a search of
that site (with their external ids) and never by a search of another, the job's collection travels through every
stage, and erasing the site leaves nothing of it in either database or the bucket."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from common.db.main_repository import MainRepository
from common.objects import ObjectStore
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from tests.e2e.conftest import RunningPipeline, search, upload
from tests.shared_data import BASIC

pytestmark = pytest.mark.e2e


def test_a_site_finds_its_own_people_only_and_is_erased_whole(
    pipeline: RunningPipeline, services: LocalServices, object_store: ObjectStore
) -> None:
    main = MainRepository.at(services.dsn(MAIN_DB))
    site = main.create_collection(f"site-{uuid.uuid4().hex[:8]}")
    admin = {"X-API-Key": main.create_api_key("e2e site admin", "admin").key}
    site_key = {"X-API-Key": main.create_api_key("e2e site reader", "read", [site.id]).key}
    with pipeline.client() as client:
        person = client.post(
            "/v1/users",
            json={"email": f"ann.{uuid.uuid4().hex[:8]}@example.com", "collection": site.name, "external_id": "HR-7"},
        )
        assert person.status_code == 201 and person.json()["collection"] == site.name, person.text
        user_id = person.json()["id"]
        enrolled = upload(client, f"/v1/users/{user_id}/faces", "obama_1.jpg", {"wait": 60, "external_id": "ph-1"})
        assert enrolled.status_code == 200, enrolled.text
        face_id = enrolled.json()["result"]["face_id"]
        assert client.get(f"/v1/faces/{face_id}").json()["external_id"] == "ph-1"
        # The same photo id again in the site: refused before any upload is stored.
        again = upload(client, f"/v1/users/{user_id}/faces", "obama_2.jpg", {"external_id": "ph-1"})
        assert again.status_code == 409 and again.json()["code"] == "face_external_id_taken"

        at_site = search(client, "obama_3.jpg", collection=site.name)["result"]
        [match] = at_site["faces"][0]["matches"]
        assert (match["user_id"], match["face_id"], match["external_id"]) == (user_id, face_id, "HR-7")
        assert at_site["gallery_size"] == 1
        # The default collection's search never returns the site's person, whoever else it finds there.
        elsewhere = search(client, "obama_3.jpg")
        assert user_id not in [m["user_id"] for face in elsewhere["result"]["faces"] for m in face["matches"]]
        verified = client.post(
            "/v1/verify",
            params={"user_id": user_id, "collection": site.name, "wait": 60},
            files={"file": ("obama_4.jpg", (BASIC / "obama_4.jpg").read_bytes())},
        )
        assert verified.status_code == 200 and verified.json()["result"]["match"] is True, verified.text
        # Two enrolls racing for one face id: one is stored, the other answered 409 (by the API's check, or by the
        # index stage's unique violation when both passed it), never a 500.
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda name: _enroll(pipeline, user_id, name, "race-1"), ["biden_1.jpg", "biden_2.jpg"])
            )
        assert sorted(status for status, _ in answers) == [200, 409], answers
        assert [code for status, code in answers if status == 409] == ["face_external_id_taken"]
        with psycopg.connect(services.dsn(MAIN_DB)) as conn:
            taken = conn.execute(
                "SELECT count(*) FROM faces WHERE collection_id = %s AND external_id = 'race-1'", (site.id,)
            ).fetchone()
        assert taken == (1,)
    with httpx.Client(base_url=pipeline.base_url, timeout=90, headers=site_key) as reader:
        assert reader.get(f"/v1/jobs/{elsewhere['job_id']}").json()["code"] == "job_not_found"
        assert reader.get(f"/v1/users/{user_id}").json()["external_id"] == "HR-7"
    with httpx.Client(base_url=pipeline.base_url, timeout=90, headers=admin) as operator:
        keys = _face_keys(services, site.id)
        assert operator.delete(f"/v1/collections/{site.name}").status_code == 204
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE collection_id = %s", (site.id,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM faces WHERE collection_id = %s", (site.id,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM collections WHERE id = %s", (site.id,)).fetchone() == (0,)
    with psycopg.connect(services.dsn(VECTOR_DB)) as conn:
        count = conn.execute("SELECT count(*) FROM face_embeddings WHERE collection_id = %s", (site.id,)).fetchone()
        assert count == (0,)
    stored = set(object_store.keys())
    assert keys and not [key for key in keys if key in stored]


def _enroll(pipeline: RunningPipeline, user_id: int, name: str, external_id: str) -> tuple[int, str | None]:
    with pipeline.client() as client:
        answer = upload(client, f"/v1/users/{user_id}/faces", name, {"wait": 60, "external_id": external_id})
    return answer.status_code, answer.json().get("code")


def _face_keys(services: LocalServices, collection_id: int) -> list[str]:
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        rows = conn.execute(
            "SELECT image_key, crop_key FROM faces WHERE collection_id = %s", (collection_id,)
        ).fetchall()
    return [str(key) for row in rows for key in row]
