"""What of the API needs the pipeline: erasure of enrolled faces, faces, verify, detect and search results.

Everything the API answers without a stage (users, keys, scopes, the error table, upload limits) is in tests/api."""

from __future__ import annotations

import io
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image, ImageFilter

from common.objects import ObjectStore
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from tests.e2e.conftest import RunningPipeline, create_user, search, upload
from tests.shared_data import BASIC

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(object_store: ObjectStore) -> ObjectStore:
    return object_store


def enroll(client: httpx.Client, user_id: int, name: str) -> dict[str, Any]:
    response = upload(client, f"/v1/users/{user_id}/faces", name, {"wait": 60})
    assert response.status_code == 200, response.text
    return dict(response.json()["result"])


def held(
    services: LocalServices, store: ObjectStore, user_id: int, face_ids: list[int], keys: list[str]
) -> dict[str, int]:
    """What is still stored about a user, counted in each store."""
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        users = conn.execute("SELECT count(*) FROM users WHERE id = %s", (user_id,)).fetchone()
        faces = conn.execute("SELECT count(*) FROM faces WHERE id = ANY(%s)", (face_ids,)).fetchone()
    with psycopg.connect(services.dsn(VECTOR_DB)) as conn:
        vectors = conn.execute("SELECT count(*) FROM face_embeddings WHERE face_id = ANY(%s)", (face_ids,)).fetchone()
    stored = set(store.keys())
    return {
        "users": users[0] if users else 0,
        "faces": faces[0] if faces else 0,
        "embeddings": vectors[0] if vectors else 0,
        "objects": sum(1 for key in keys if key in stored),
    }


def face_keys(services: LocalServices, face_ids: list[int]) -> list[str]:
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        rows = conn.execute("SELECT image_key, crop_key FROM faces WHERE id = ANY(%s)", (face_ids,)).fetchall()
    return [key for row in rows for key in row]


# -- erasure -------------------------------------------------------------------------------


def test_deleting_a_user_erases_everything(
    pipeline: RunningPipeline, services: LocalServices, store: ObjectStore
) -> None:
    with pipeline.client() as client:
        user_id = create_user(client, "erase-me")
        face_ids = [
            enroll(client, user_id, name)["face_id"] for name in ("kit_harington_1.jpeg", "kit_harington_2.jpeg")
        ]
        keys = face_keys(services, face_ids)
        assert held(services, store, user_id, face_ids, keys) == {"users": 1, "faces": 2, "embeddings": 2, "objects": 4}
        faces = client.get(f"/v1/users/{user_id}/faces").json()
        assert sorted(f["id"] for f in faces) == sorted(face_ids)
        assert client.delete(f"/v1/users/{user_id}").status_code == 204
        assert held(services, store, user_id, face_ids, keys) == {"users": 0, "faces": 0, "embeddings": 0, "objects": 0}
        assert client.get(f"/v1/users/{user_id}").status_code == 404
        assert client.delete(f"/v1/users/{user_id}").status_code == 404
        # The erased person is no longer found.
        matches = search(client, "kit_harington_3.jpg")["result"]["faces"][0]["matches"]
        assert user_id not in [m["user_id"] for m in matches]


def test_faces_list_get_delete_with_presigned_urls(
    pipeline: RunningPipeline, services: LocalServices, store: ObjectStore
) -> None:
    with pipeline.client() as client:
        user_id = create_user(client, "faces")
        face_id = enroll(client, user_id, "rose_leslie_1.jpg")["face_id"]
        other_id = enroll(client, user_id, "rose_leslie_2.jpg")["face_id"]
        face = client.get(f"/v1/faces/{face_id}").json()
        assert face["user_id"] == user_id and len(face["box"]) == 4 and face["model_pack"]
        photo = httpx.get(face["photo_url"], timeout=10)
        assert photo.status_code == 200 and photo.content == (BASIC / "rose_leslie_1.jpg").read_bytes()
        crop = Image.open(io.BytesIO(httpx.get(face["crop_url"], timeout=10).content))
        assert crop.size == (112, 112)
        # Only the signature opens the bucket: the same URL without it is refused.
        assert 400 <= httpx.get(face["photo_url"].split("?")[0], timeout=10).status_code < 500
        keys = face_keys(services, [face_id])
        assert client.delete(f"/v1/faces/{face_id}").status_code == 204
        assert held(services, store, user_id, [face_id], keys) == {
            "users": 1,
            "faces": 0,
            "embeddings": 0,
            "objects": 0,
        }
        assert client.get(f"/v1/faces/{face_id}").json()["code"] == "face_not_found"
        assert [f["id"] for f in client.get(f"/v1/users/{user_id}/faces").json()] == [other_id]
        assert client.get("/v1/users/999999999/faces").status_code == 404
        # Leave no second enrolled Rose Leslie behind for the identity tests.
        assert client.delete(f"/v1/users/{user_id}").status_code == 204


# -- verify, detect, search extras ----------------------------------------------------------------------


def verify(client: httpx.Client, name: str, **kwargs: Any) -> httpx.Response:
    files = {"file": (name, (BASIC / name).read_bytes())}
    if "second" in kwargs:
        second = kwargs.pop("second")
        files["second_file"] = (second, (BASIC / second).read_bytes())
    return client.post("/v1/verify", files=files, params={"wait": 60, **kwargs})


def test_verify_against_a_user_and_against_a_photo(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    obama = enrolled["users"]["obama"]
    with pipeline.client("read") as client:
        same = verify(client, "obama_3.jpg", user_id=obama).json()["result"]
        assert same["match"] is True and same["similarity"] >= same["threshold"] and same["face_id"]
        other = verify(client, "biden_1.jpg", user_id=obama).json()["result"]
        assert other["match"] is False and other["similarity"] < other["threshold"]
        pair = verify(client, "rose_leslie_1.jpg", second="rose_leslie_2.jpg").json()["result"]
        assert pair["match"] is True and [f["photo"] for f in pair["faces"]] == [0, 1]
        assert verify(client, "rose_leslie_1.jpg", second="biden_2.jpg").json()["result"]["match"] is False
        no_face = verify(client, "obama_1.jpg", second="aligned112_tom_hanks.png")
        assert no_face.status_code == 422 and "second photo" in no_face.json()["detail"]
    with pipeline.client() as client:
        empty_user = create_user(client, "no-faces")
        nothing = verify(client, "obama_1.jpg", user_id=empty_user)
        assert nothing.status_code == 422 and nothing.json()["code"] == "user_has_no_faces"


def test_detect_only_reports_faces_and_quality(pipeline: RunningPipeline) -> None:
    sharp_photo = (BASIC / "obama_1.jpg").read_bytes()
    blurred = io.BytesIO()
    Image.open(io.BytesIO(sharp_photo)).filter(ImageFilter.GaussianBlur(6)).save(blurred, format="JPEG")
    with pipeline.client("read") as client:
        found = client.post("/v1/detect", files={"file": ("a.jpg", sharp_photo)}, params={"wait": 60}).json()
        soft = client.post("/v1/detect", files={"file": ("b.jpg", blurred.getvalue())}, params={"wait": 60}).json()
        group = upload(client, "/v1/detect", "multi_group_t1.jpg", {"wait": 60}).json()
    face = found["result"]["faces"][0]
    assert found["kind"] == "detect" and len(face["keypoints"]) == 5 and face["score"] > 0.5
    assert face["quality"]["size"] > 200
    assert soft["result"]["faces"][0]["quality"]["sharpness"] < face["quality"]["sharpness"] / 3
    assert len(group["result"]["faces"]) == 6 and set(found["stages"]) == {"detect"}


def test_search_result_carries_timing_and_photo_urls_and_keeps_no_photo(
    pipeline: RunningPipeline, enrolled: dict[str, Any], store: ObjectStore
) -> None:
    with pipeline.client("read") as client:
        job = search(client, "obama_4.jpg")
    assert job["query_time_ms"] > 0
    match = job["result"]["faces"][0]["matches"][0]
    assert "image_key" not in match and httpx.get(match["photo_url"], timeout=10).status_code == 200
    stored = store.keys()
    assert not [key for key in stored if job["job_id"] in key]  # the query photo and its crops are gone
