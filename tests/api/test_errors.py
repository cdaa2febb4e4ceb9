"""The README's error table, answered by the API itself (no stage runs), and the upload limits."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration

LIMIT = 10 * 1024 * 1024  # FECAPASS_MAX_UPLOAD_BYTES default


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def png_not_deflate() -> bytes:
    """Every chunk's CRC right, its IDAT not a deflate stream (was a 500: the inflater's error went uncaught)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x07" * 200) + chunk(b"IEND", b"")


def assert_problem(response: object, status: int, code: str) -> None:
    assert response.status_code == status, (code, response.text)  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == code and body["status"] == status and body["title"] and body["detail"]


def test_error_contract(api: TestClient, installation: Installation) -> None:
    whole = photo(256)
    truncated = whole[: len(whole) // 3]
    cases = [
        ({"file": ("x.jpg", b"not an image at all")}, 415, "unsupported_media_type"),
        ({"file": ("x.jpg", b"")}, 415, "unsupported_media_type"),
        ({"file": ("x.png", png_bomb(50_000, 50_000))}, 422, "image_too_large"),
        ({"file": ("x.jpg", truncated)}, 422, "undecodable_image"),
        ({"file": ("x.png", png_not_deflate())}, 422, "undecodable_image"),
    ]
    read = key(installation, "read")
    before = installation.submitted()
    for files, status, code in cases:
        assert_problem(api.post("/v1/search", files=files, headers=read), status, code)
    assert installation.submitted() == before  # a refused photo is neither stored nor queued
    assert_problem(api.get("/v1/jobs/nope", headers=read), 404, "job_not_found")
    assert_problem(api.get("/v1/nowhere", headers=read), 404, "not_found")
    assert_problem(api.get("/v1/users/999999999", headers=read), 404, "user_not_found")
    assert_problem(api.get("/v1/faces/999999999", headers=read), 404, "face_not_found")
    assert_problem(api.get("/v1/users", params={"limit": 0}, headers=read), 422, "invalid_request")
    assert_problem(api.post("/v1/search", headers=read), 422, "invalid_request")
    assert_problem(
        api.post("/v1/search", params={"threshold": 2}, files=cases[0][0], headers=read), 422, "invalid_request"
    )
    assert_problem(api.get("/v1/users"), 401, "missing_api_key")
    assert_problem(api.get("/v1/users", headers={"X-API-Key": "fcp_x"}), 401, "invalid_api_key")
    assert_problem(api.post("/v1/users", json={"email": new_email("r")}, headers=read), 403, "insufficient_scope")
    write = key(installation, "write")
    email = new_email("twice")
    assert api.post("/v1/users", json={"email": email}, headers=write).status_code == 201
    assert_problem(api.post("/v1/users", json={"email": email.upper()}, headers=write), 409, "email_taken")
    broken = api.post(
        "/v1/search", content=b"--b\r\nnot a part", headers={**read, "content-type": "multipart/form-data; boundary=b"}
    )
    assert_problem(broken, 400, "http_error")


def test_verify_takes_exactly_one_comparison(api: TestClient, installation: Installation) -> None:
    read = key(installation, "read")
    user_id = installation.main.create_user(new_email("verify"), "").id
    files = {"file": ("a.jpg", photo()), "second_file": ("b.jpg", photo(seed=1))}
    before = installation.submitted()
    both = api.post("/v1/verify", files=files, params={"user_id": user_id}, headers=read)
    assert_problem(both, 422, "invalid_request")
    neither = api.post("/v1/verify", files={"file": ("a.jpg", photo())}, headers=read)
    assert_problem(neither, 422, "invalid_request")
    assert api.post("/v1/verify", files={"file": ("a", b"x")}, headers=read).status_code == 422
    assert installation.submitted() == before


def multipart_stream(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A well-formed multipart body with one huge file part, sent without Content-Length."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sent = 0
    while sent < total:
        yield b"\xff" * min(size, total - sent)
        sent += size
    yield b"\r\n--b--\r\n"


def test_oversized_upload_is_refused_while_streaming(api: TestClient, installation: Installation) -> None:
    read = key(installation, "read")
    multipart = {**read, "content-type": "multipart/form-data; boundary=b"}
    before = installation.submitted()
    declared = api.post("/v1/search", content=b"x" * (3 * LIMIT), headers=multipart)
    assert_problem(declared, 413, "upload_too_large")
    # No Content-Length (chunked): refused once the bytes received pass the limit.
    streamed = api.post("/v1/search", content=multipart_stream(3 * LIMIT), headers=multipart)
    assert_problem(streamed, 413, "upload_too_large")
    big_photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2600, 2600, 3), dtype=np.uint8)).save(
        big_photo, format="PNG"
    )
    assert big_photo.tell() > LIMIT
    one_file = api.post("/v1/search", files={"file": ("big.png", big_photo.getvalue())}, headers=read)
    assert_problem(one_file, 413, "upload_too_large")
    assert installation.submitted() == before


def test_a_photo_within_the_limits_becomes_a_queued_job(api: TestClient, installation: Installation) -> None:
    stored, queued = installation.submitted()
    response = api.post("/v1/detect", files={"file": ("a.png", photo(fmt="PNG"))}, headers=key(installation, "read"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "detect" and job["state"] == "queued" and job["model_pack"] == "buffalo_sc_lite"
    assert installation.redis.get(job["image_key"]) == photo(fmt="PNG")  # a detect photo is transient: in Valkey
    assert installation.submitted() == (stored + 1, queued + 1)
