"""The Python client against the whole pipeline with a real model pack: jobs waited on until done, typed results
of every kind, a failed job as an exception with its code and job id. Skipped (with the reason) without ../shared."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fecapass_client import (
    AsyncFecapass,
    DetectResult,
    EnrollResult,
    Fecapass,
    SearchResult,
    ValidationFailed,
    VerifyResult,
)

from tests.api.conftest import photo
from tests.e2e.conftest import RunningPipeline
from tests.shared_data import BASIC

pytestmark = pytest.mark.e2e


def test_enroll_then_find_the_person_with_the_client(pipeline: RunningPipeline) -> None:
    with Fecapass(pipeline.base_url, pipeline.keys["write"]) as api:
        user = api.create_user(f"obama.{uuid.uuid4().hex[:8]}@example.com", "Barack Obama (client)")
        queued = api.enroll(user.id, BASIC / "obama_1.jpg")  # answered at once: queued
        assert queued.kind == "enroll" and queued.user_id == user.id
        job = api.wait_for_job(queued.job_id, timeout=90)
        assert job.done and isinstance(job.result, EnrollResult)
        assert job.result.user_id == user.id and job.result.faces_seen == 1
        (face,) = api.list_faces(user.id)
        assert face.id == job.result.face_id and face.user_id == user.id

        verified = api.verify(BASIC / "obama_2.jpg", user_id=user.id, wait=60)
        assert verified.done and isinstance(verified.result, VerifyResult)
        assert verified.result.match and verified.result.face_id == face.id

        searched = api.search((BASIC / "obama_3.jpg").read_bytes(), filename="obama_3.jpg", limit=100, wait=60)
        assert isinstance(searched.result, SearchResult) and searched.result.faces_seen == 1
        (found,) = searched.result.faces
        assert user.id in {match.user_id for match in found.matches}

        detected = api.detect(BASIC / "multi_two_people.jpg", wait=60)
        assert isinstance(detected.result, DetectResult) and detected.result.faces_seen == 2
        assert all(len(face.keypoints) == 5 for face in detected.result.faces)
        # A second enrolled obama_1.jpg would tie with the session's own Obama in other modules' searches.
        api.delete_user(user.id)


def test_a_failed_job_is_an_exception_with_its_code_and_job(pipeline: RunningPipeline) -> None:
    with Fecapass(pipeline.base_url, pipeline.keys["write"]) as api:
        user = api.create_user(f"noface.{uuid.uuid4().hex[:8]}@example.com")
        with pytest.raises(ValidationFailed) as no_face:
            api.enroll(user.id, photo(size=96, seed=3), wait=60)
        assert no_face.value.code == "no_face" and no_face.value.job_id
        failed = api.wait_for_job(no_face.value.job_id, timeout=10)  # a finished job: no waiting
        assert failed.failed and failed.error is not None and failed.error.code == "no_face"
        assert api.list_faces(user.id) == []


def test_the_async_client_waits_on_a_search(pipeline: RunningPipeline) -> None:
    async def scenario() -> list[SearchResult]:
        async with AsyncFecapass(pipeline.base_url, pipeline.keys["read"]) as api:
            jobs = await asyncio.gather(*(api.search(BASIC / name) for name in ("biden_1.jpg", "biden_2.jpg")))
            finished = await asyncio.gather(*(api.wait_for_job(job.job_id, timeout=90) for job in jobs))
        results = [job.result for job in finished]
        assert all(isinstance(result, SearchResult) for result in results)
        return results  # type: ignore[return-value]

    results = asyncio.run(scenario())
    assert [result.faces_seen for result in results] == [1, 1]
