"""Enroll and search over HTTP through every stage, on real servers and the real offline model pack."""

from __future__ import annotations

import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis

from operations.services import MAIN_DB, LocalServices
from schemas.streams import PIPELINE, Stage
from tests.e2e.conftest import RunningPipeline, create_user, search, upload
from tests.shared_data import LabelledFace, iou, labels

pytestmark = pytest.mark.e2e


def test_every_other_photo_finds_its_person_first(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    users = enrolled["users"]
    with pipeline.client() as client:
        for identity, files in enrolled["held_back"].items():
            for name in files:
                job = search(client, name)
                faces = job["result"]["faces"]
                assert len(faces) == 1, name
                matches = faces[0]["matches"]
                assert matches, f"{name}: no match for {identity}"
                assert matches[0]["user_id"] == users[identity], name
                assert matches[0]["similarity"] >= job["result"]["threshold"]


def test_resized_and_rgba_variants_find_the_person(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    variants = [row for row in labels() if row.role == "variant"]
    with pipeline.client() as client:
        for row in variants:
            faces = search(client, row.file)["result"]["faces"]
            best = max(faces, key=lambda face: iou(face["box"], row.box or (0, 0, 0, 0)))
            assert best["matches"] and best["matches"][0]["user_id"] == enrolled["users"][row.identity], row.file


def test_multi_face_photos_give_one_result_per_face(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    users = enrolled["users"]
    by_file: dict[str, list[LabelledFace]] = defaultdict(list)
    for row in labels():
        if row.role == "multi":
            by_file[row.file].append(row)
    with pipeline.client() as client:
        for name, rows in by_file.items():
            faces = search(client, name)["result"]["faces"]
            assert len(faces) == len(rows), name
            for row in rows:
                face = max(faces, key=lambda f: iou(f["box"], row.box or (0, 0, 0, 0)))
                assert iou(face["box"], row.box or (0, 0, 0, 0)) > 0.9
                if row.identity in users:
                    assert face["matches"][0]["user_id"] == users[row.identity], (name, row.identity)
                else:  # never enrolled: nobody may be returned
                    assert face["matches"] == [], (name, row.identity, face["matches"])


def test_photo_without_face_fails_with_no_face(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    with pipeline.client() as client:
        waited = upload(client, "/v1/search", "aligned112_tom_hanks.png", {"wait": 60})
        assert waited.status_code == 422
        assert waited.headers["content-type"].startswith("application/problem+json")
        assert waited.json()["code"] == "no_face"
        user_id = enrolled["users"]["obama"]
        accepted = upload(client, f"/v1/users/{user_id}/faces", "aligned112_tom_hanks.png")
        assert accepted.status_code == 202
        job = client.get(accepted.json()["status_url"], params={"wait": 60}).json()
        assert job["state"] == "failed" and job["error"]["code"] == "no_face"


def test_enroll_photo_with_several_faces_enrolls_the_largest(pipeline: RunningPipeline) -> None:
    with pipeline.client() as client:
        user_id = create_user(client, "group")
        job = upload(client, f"/v1/users/{user_id}/faces", "multi_obama_and_biden.jpg", {"wait": 60}).json()
    assert job["state"] == "done" and job["result"]["faces_seen"] == 3
    biden = next(r for r in labels() if r.file == "multi_obama_and_biden.jpg" and r.identity == "biden")
    obama = next(r for r in labels() if r.file == "multi_obama_and_biden.jpg" and r.identity == "obama")
    largest = max((biden, obama), key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))  # type: ignore[index]
    assert iou(job["result"]["face"]["box"], largest.box) > 0.9  # type: ignore[arg-type]


def test_search_threshold_and_limit_are_applied(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    with pipeline.client() as client:
        loose = search(client, "obama_2.jpg", threshold=-1, limit=3)["result"]
        assert len(loose["faces"][0]["matches"]) == 3  # everyone qualifies; limit cuts
        strict = search(client, "obama_2.jpg", threshold=0.99)["result"]
        assert strict["faces"][0]["matches"] == []
        assert client.post("/v1/search", params={"limit": 0}, files={"file": ("x", b"x")}).status_code == 422


def test_job_answers_202_without_wait_and_job_can_be_read(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    with pipeline.client() as client:
        accepted = upload(client, "/v1/search", "obama_3.jpg")
        assert accepted.status_code == 202
        body = accepted.json()
        assert body["state"] in ("queued", "detecting", "aligning", "embedding", "indexing")
        assert accepted.headers["location"] == body["status_url"]
        finished = client.get(f"/v1/jobs/{body['job_id']}", params={"wait": 60}).json()
        assert finished["state"] == "done"
        assert set(finished["stages"]) == {"detect", "align", "embed", "index"}
        assert client.get("/v1/jobs/does-not-exist").status_code == 404


def test_bad_requests_get_clear_errors(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    with pipeline.client() as client:
        assert upload(client, "/v1/users/999999999/faces", "obama_1.jpg").json()["code"] == "user_not_found"
        text = client.post("/v1/search", files={"file": ("photo.jpg", b"this is not a photo")})
        assert text.status_code == 415 and text.json()["code"] == "unsupported_media_type"
        email = f"dup.{uuid.uuid4().hex}@example.com"
        assert client.post("/v1/users", json={"email": email}).status_code == 201
        duplicate = client.post("/v1/users", json={"email": email.upper()})
        assert duplicate.status_code == 409 and duplicate.json()["code"] == "email_taken"


def test_two_processes_per_stage_share_work_without_loss_or_duplicates(
    pipeline: RunningPipeline, enrolled: dict[str, Any], services: LocalServices
) -> None:
    photos = ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "obama_4.jpg", "biden_1.jpg", "biden_2.jpg"] * 4
    with pipeline.client() as client:
        user_id = create_user(client, "burst")

        def enroll(name: str) -> str:
            response = upload(client, f"/v1/users/{user_id}/faces", name)
            assert response.status_code == 202, response.text
            return str(response.json()["job_id"])

        with ThreadPoolExecutor(8) as pool:
            job_ids = list(pool.map(enroll, photos))
        finished = [client.get(f"/v1/jobs/{job_id}", params={"wait": 90}).json() for job_id in job_ids]
    assert [job["state"] for job in finished] == ["done"] * len(photos)
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        rows = conn.execute(
            "SELECT job_id, count(*) FROM faces WHERE user_id = %s GROUP BY job_id", (user_id,)
        ).fetchall()
    assert sorted(job for job, _ in rows) == sorted(job_ids)  # every job exactly one face: none lost
    assert all(count == 1 for _, count in rows)  # none duplicated
    for stage in PIPELINE:
        handled = pipeline.handled_by(stage)
        assert len(handled) == 2 and all(count > 0 for count in handled.values()), (stage, handled)
    check = redis.Redis.from_url(services.redis_url)
    for stage in Stage:
        assert check.xpending(stage.stream, stage.group)["pending"] == 0
        assert check.xlen(stage.dead_letter_stream) == 0
    with pipeline.client() as client:  # the burst user must not answer other tests' searches
        assert client.delete(f"/v1/users/{user_id}").status_code == 204
