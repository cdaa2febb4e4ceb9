"""Where the API puts a photo (Valkey for a search, verify or detect; S3 for an enroll), and the backpressure on the
bytes Valkey holds: past FECAPASS_TRANSIENT_MAX_BYTES an upload is refused with 429 and Retry-After, stores nothing
and queues nothing, and is admitted again once jobs have ended. Counted from Valkey and the S3 bucket."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from common.transient import BLOB_PREFIX, BYTES_KEY, delete_blobs, photo_blob_key
from ingest_api.app import create_app
from schemas.streams import Stage
from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration


def blobs(installation: Installation) -> list[str]:
    return sorted(k.decode() for k in installation.redis.scan_iter(match=f"{BLOB_PREFIX}*"))


def test_a_search_photo_goes_to_valkey_and_never_to_s3(api: TestClient, installation: Installation) -> None:
    originals = installation.store.keys("originals/")
    data = photo(seed=21)
    response = api.post("/v1/search", files={"file": ("a.jpg", data)}, headers=key(installation, "read"))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    blob = photo_blob_key(job_id)
    assert response.json()["image_key"] == blob
    assert installation.redis.get(blob) == data
    assert 0 < installation.redis.pttl(blob) <= 3600 * 1000  # FECAPASS_TRANSIENT_TTL_SECONDS
    assert installation.store.keys("originals/") == originals  # nothing in S3
    [(_, entry)] = [e for e in installation.redis.xrange(Stage.DETECT.stream) if e[1][b"job_id"] == job_id.encode()]
    assert entry[b"image_key"] == blob.encode() and all(len(v) < 1000 for v in entry.values())  # no bytes in it


def test_an_enroll_photo_goes_to_s3(api: TestClient, installation: Installation) -> None:
    user = installation.main.create_user(new_email("transient"), "Kept Photo")
    assert user is not None
    data = photo(seed=22)
    response = api.post(
        f"/v1/users/{user.id}/faces", files={"file": ("a.jpg", data)}, headers=key(installation, "write")
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert installation.store.get(f"originals/{job_id}") == data
    assert not [b for b in blobs(installation) if job_id in b]


def test_photos_past_the_byte_cap_are_refused_with_retry_after_then_admitted(installation: Installation) -> None:
    delete_blobs(installation.redis, blobs(installation))  # other tests' uploads (no stage runs here)
    cap = 1024 * 1024
    big = photo(size=400, seed=23, fmt="PNG")  # noise: ~470 KB
    read = key(installation, "read")
    with TestClient(
        create_app(installation.config(transient_max_bytes=str(cap))), raise_server_exceptions=False
    ) as api:
        accepted = []
        refused = None
        for index in range(8):
            before = installation.submitted()
            response = api.post("/v1/search", files={"file": (f"{index}.png", big)}, headers=read)
            if response.status_code != 202:
                refused = response
                break
            accepted.append(response.json()["job_id"])
        assert refused is not None and refused.status_code == 429, refused and refused.text
        assert refused.json()["code"] == "backlog_full" and int(refused.headers["Retry-After"]) > 0
        assert len(accepted) == cap // len(big)
        assert installation.submitted() == before  # the refused photo is neither stored nor queued
        assert blobs(installation) == sorted(photo_blob_key(job) for job in accepted)
        # A verify of two photos is counted as both: refused too.
        two = api.post(
            "/v1/verify", files={"file": ("a.png", big), "second_file": ("b.png", photo(seed=3))}, headers=read
        )
        assert two.status_code == 429, two.text
        # Jobs end (their final write deletes their blobs, as the runner's does): uploads are admitted again.
        delete_blobs(installation.redis, [photo_blob_key(job) for job in accepted])
        again = api.post("/v1/search", files={"file": ("again.png", big)}, headers=read)
        assert again.status_code == 202, again.text
    delete_blobs(installation.redis, blobs(installation))
    assert not installation.redis.exists(BYTES_KEY)


def test_a_photo_sent_as_the_body_is_taken_like_a_multipart_one(api: TestClient, installation: Installation) -> None:
    data = photo(seed=31)
    read = {**key(installation, "read"), "Content-Type": "image/jpeg"}
    searched = api.post("/v1/search", content=data, headers=read)
    assert searched.status_code == 202, searched.text
    assert installation.redis.get(photo_blob_key(searched.json()["job_id"])) == data
    png = photo(seed=32, fmt="PNG")
    detected = api.post("/v1/detect", content=png, headers={**read, "Content-Type": "image/png; charset=binary"})
    assert detected.status_code == 202, detected.text
    assert installation.redis.get(photo_blob_key(detected.json()["job_id"])) == png
    user = installation.main.create_user(new_email("raw"), "Raw Body")
    assert user is not None
    write = {**key(installation, "write"), "Content-Type": "image/jpeg"}
    enrolled = api.post(f"/v1/users/{user.id}/faces", content=data, headers=write)
    assert enrolled.status_code == 202, enrolled.text
    assert installation.store.get(f"originals/{enrolled.json()['job_id']}") == data
    verified = api.post("/v1/verify", params={"user_id": user.id}, content=data, headers=read)
    assert verified.status_code == 202, verified.text


def test_a_body_photo_is_sniffed_and_limited_like_a_multipart_one(api: TestClient, installation: Installation) -> None:
    read = {**key(installation, "read"), "Content-Type": "image/jpeg"}
    before = installation.submitted()
    lying = api.post("/v1/search", content=b"GIF89a, or rather plain text", headers=read)
    assert lying.status_code == 415 and lying.json()["code"] == "unsupported_media_type", lying.text
    empty = api.post("/v1/search", content=b"", headers=read)
    assert empty.status_code == 415, empty.text
    other = api.post("/v1/search", content=photo(seed=33), headers={**read, "Content-Type": "text/plain"})
    assert other.status_code == 422 and other.json()["code"] == "invalid_request", other.text
    too_large = api.post("/v1/search", content=photo(seed=34) + b"\0" * (10 * 1024 * 1024), headers=read)
    assert too_large.status_code == 413, too_large.text
    assert installation.submitted() == before  # none of them stored or queued anything


def test_the_openapi_document_offers_both_ways_to_send_a_photo(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/v1/users/{user_id}/faces", "/v1/search", "/v1/verify", "/v1/detect"):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert set(body["content"]) == {"multipart/form-data", "image/jpeg", "image/png", "image/webp"}, path
    assert "requestBody" not in paths["/v1/users"]["get"]
