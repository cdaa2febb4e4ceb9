"""Erasure through the whole product: the API, a worker per stage, real models. An erased face whose index entry is
delivered again stays erased; a user deleted while their enroll runs leaves nothing stored."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import redis

from common.objects import ObjectStore
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from schemas.jobs import job_key
from schemas.streams import PIPELINE, Stage
from tests.e2e.conftest import RunningPipeline, create_user, upload

PHOTO, OTHER_PHOTO = "biden_1.jpg", "biden_2.jpg"


def job_hash(client: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(job_key(job_id)).items()}


def wait_for_end(client: redis.Redis, job_id: str, seconds: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = job_hash(client, job_id)
        if state.get("state") in ("done", "failed"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {seconds} s: {job_hash(client, job_id)}")


def stored(services: LocalServices, job_id: str, face_id: int) -> tuple[int, int]:
    """Face rows of the job (served or not) and embeddings of the face, counted in the databases."""
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        rows = conn.execute("SELECT count(*) FROM faces WHERE job_id = %s", (job_id,)).fetchone()
    with psycopg.connect(services.dsn(VECTOR_DB)) as conn:
        vectors = conn.execute("SELECT count(*) FROM face_embeddings WHERE face_id = %s", (face_id,)).fetchone()
    assert rows is not None and vectors is not None
    return int(rows[0]), int(vectors[0])


def entries_naming(client: redis.Redis, job_id: str) -> list[tuple[str, bytes]]:
    found = []
    for stage in Stage:
        for stream in (stage.stream, stage.dead_letter_stream):
            found += [(stream, i) for i, fields in client.xrange(stream) if fields.get(b"job_id") == job_id.encode()]
    return found


def matched_users(client: httpx.Client) -> set[int]:
    response = upload(client, "/v1/search", OTHER_PHOTO, {"wait": 60})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return {match["user_id"] for face in result["faces"] for match in face["matches"]}


def test_a_redelivered_index_entry_of_an_erased_face_stores_nothing(
    pipeline: RunningPipeline, services: LocalServices
) -> None:
    check = redis.Redis.from_url(services.redis_url)
    with pipeline.client() as client:
        user_id = create_user(client, "erased")
        enrolled = upload(client, f"/v1/users/{user_id}/faces", PHOTO, {"wait": 60})
        assert enrolled.status_code == 200, enrolled.text
        job_id, face_id = enrolled.json()["job_id"], enrolled.json()["result"]["face_id"]
        assert user_id in matched_users(client)
        (original,) = [f for _, f in check.xrange(Stage.INDEX.stream) if f.get(b"job_id") == job_id.encode()]

        assert client.delete(f"/v1/faces/{face_id}").status_code == 204
        assert stored(services, job_id, face_id) == (0, 0)
        assert entries_naming(check, job_id) == [] and job_hash(check, job_id) == {}
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404

        check.xadd(Stage.INDEX.stream, original)  # the exact entry again, as a redelivery or a replay would
        state = wait_for_end(check, job_id)
        assert state["state"] == "failed" and state["error_code"] == "face_erased", state
        assert stored(services, job_id, face_id) == (0, 0)
        assert client.get(f"/v1/faces/{face_id}").status_code == 404
        assert user_id not in matched_users(client)
        assert client.delete(f"/v1/users/{user_id}").status_code == 204
    check.close()


def test_a_user_deleted_while_their_enroll_runs_leaves_nothing(
    pipeline: RunningPipeline, services: LocalServices, object_store: ObjectStore
) -> None:
    check = redis.Redis.from_url(services.redis_url)
    with pipeline.client() as client:
        user_id = create_user(client, "leaving")
        submitted = upload(client, f"/v1/users/{user_id}/faces", PHOTO)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        assert client.delete(f"/v1/users/{user_id}").status_code == 204

        # Wherever the job was, it ends failed; a worker that held one of its entries at the erasure carries it
        # to the index stage, which stores nothing.
        state = wait_for_end(check, job_id)
        assert state["state"] == "failed" and state["error_code"] == "user_not_found", state
        wait_until_nothing_pending(check, job_id)
        state = job_hash(check, job_id)
        assert state["state"] == "failed" and state["error_code"] == "user_not_found", state
        with psycopg.connect(services.dsn(MAIN_DB)) as conn:
            assert conn.execute("SELECT count(*) FROM faces WHERE job_id = %s", (job_id,)).fetchone() == (0,)
        assert [key for key in object_store.keys("") if job_id in key] == []
        assert "user_id" not in state and "result" not in state
        assert user_id not in matched_users(client)
    check.close()


def wait_until_nothing_pending(client: redis.Redis, job_id: str, seconds: float = 60) -> None:
    """Until no worker holds an entry of the job (other tests' entries may stay pending: they are not looked at)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(
            fields.get(b"job_id") == job_id.encode()
            for stage in PIPELINE
            for row in client.xpending_range(stage.stream, stage.group, min="-", max="+", count=1000)
            for _, fields in client.xrange(stage.stream, min=row["message_id"], max=row["message_id"])
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"entries of job {job_id} still pending after {seconds} s")
