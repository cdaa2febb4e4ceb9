"""The complete API against real services: erasure, faces, verify, detect, the error contract and keys."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image, ImageFilter

from common.objects import ObjectStore
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from tests.e2e.conftest import RunningPipeline, create_key, create_user, search, upload
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


# -- users and erasure -------------------------------------------------------------------------------


def test_user_crud_and_pagination(pipeline: RunningPipeline) -> None:
    with pipeline.client() as client:
        ids = [create_user(client, f"page{index}") for index in range(5)]
        first = client.get("/v1/users", params={"after": ids[0] - 1, "limit": 2}).json()
        assert [u["id"] for u in first["items"]] == ids[:2] and first["next_after"] == ids[1]
        second = client.get("/v1/users", params={"after": first["next_after"], "limit": 2}).json()
        assert [u["id"] for u in second["items"]] == ids[2:4]
        updated = client.patch(f"/v1/users/{ids[0]}", json={"full_name": "New Name", "is_active": False})
        assert updated.status_code == 200 and updated.json()["full_name"] == "New Name"
        assert updated.json()["is_active"] is False
        taken = client.get(f"/v1/users/{ids[1]}").json()["email"]
        clash = client.patch(f"/v1/users/{ids[0]}", json={"email": taken})
        assert clash.status_code == 409 and clash.json()["code"] == "email_taken"
        assert client.patch("/v1/users/999999999", json={"full_name": "x"}).status_code == 404
        nul = client.post("/v1/users", json={"email": "nul@example.com", "full_name": "a\u0000b"})
        assert nul.status_code == 422 and nul.json()["code"] == "invalid_request"
        # An inactive user can neither enroll nor be verified.
        assert upload(client, f"/v1/users/{ids[0]}/faces", "obama_1.jpg").json()["code"] == "user_not_found"


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
        both = verify(client, "obama_1.jpg", second="obama_2.jpg", user_id=obama)
        assert both.status_code == 422 and both.json()["code"] == "invalid_request"
        assert client.post("/v1/verify", files={"file": ("a", b"x")}).status_code == 422
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


# -- error contract ------------------------------------------------------------------------------------------


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def test_error_contract(pipeline: RunningPipeline) -> None:
    truncated = (BASIC / "obama_1.jpg").read_bytes()
    truncated = truncated[: len(truncated) // 3]
    cases = [
        ({"file": ("x.jpg", b"not an image at all")}, 415, "unsupported_media_type"),
        ({"file": ("x.jpg", b"")}, 415, "unsupported_media_type"),
        ({"file": ("x.png", png_bomb(50_000, 50_000))}, 422, "image_too_large"),
        ({"file": ("x.jpg", truncated)}, 422, "undecodable_image"),
    ]
    with pipeline.client("read") as client:
        for files, status, code in cases:
            response = client.post("/v1/search", files=files)
            assert response.status_code == status, (code, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["code"] == code and body["status"] == status and body["title"] and body["detail"]
        assert client.get("/v1/jobs/nope").json()["code"] == "job_not_found"
        assert client.get("/v1/nowhere").json()["code"] == "not_found"


def multipart_stream(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A well-formed multipart body with one huge file part, sent without Content-Length."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sent = 0
    while sent < total:
        yield b"\xff" * min(size, total - sent)
        sent += size
    yield b"\r\n--b--\r\n"


def test_oversized_upload_is_refused_while_streaming(pipeline: RunningPipeline) -> None:
    limit = 10 * 1024 * 1024  # FECAPASS_MAX_UPLOAD_BYTES default
    with pipeline.client("read") as client:
        declared = client.post(
            "/v1/search", content=b"x" * (3 * limit), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert declared.status_code == 413 and declared.json()["code"] == "upload_too_large"
        # No Content-Length (chunked): refused once the bytes received pass the limit.
        streamed = client.post(
            "/v1/search",
            content=multipart_stream(3 * limit),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413 and streamed.json()["code"] == "upload_too_large"
        big_photo = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (2600, 2600, 3), dtype=np.uint8)).save(
            big_photo, format="PNG"
        )
        assert big_photo.tell() > limit
        one_file = client.post("/v1/search", files={"file": ("big.png", big_photo.getvalue())})
        assert one_file.status_code == 413 and one_file.json()["code"] == "upload_too_large"


# -- API keys ------------------------------------------------------------------------------------------------


def test_keys_and_scopes(pipeline: RunningPipeline, services: LocalServices) -> None:
    base = pipeline.base_url
    assert httpx.get(f"{base}/v1/users").json()["code"] == "missing_api_key"
    assert httpx.get(f"{base}/v1/users", headers={"X-API-Key": "fcp_made_up"}).status_code == 401
    assert httpx.get(f"{base}/health/live").status_code == 200 and httpx.get(f"{base}/metrics").status_code == 200
    with pipeline.client("read") as reader:
        assert reader.get("/v1/users").status_code == 200
        forbidden = reader.post("/v1/users", json={"email": "reader@example.com"})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "insufficient_scope"
        assert reader.delete("/v1/users/1").status_code == 403
        assert upload(reader, "/v1/users/1/faces", "obama_1.jpg").status_code == 403
    key = create_key(services, "write", name="revoked-before-use")
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'revoked-before-use'")
    assert httpx.get(f"{base}/v1/users", headers={"X-API-Key": key}).json()["code"] == "invalid_api_key"
