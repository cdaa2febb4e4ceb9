"""Result models: what the status hash stores, what clients get, and the OpenAPI document they describe."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from common import settings as s
from ingest_api.app import create_app
from ingest_api.config import ApiConfig
from schemas import api
from schemas.api import Job, WebhookBody
from schemas.results import (
    RESULT_TYPES,
    STORED_RESULT_TYPES,
    DetectedFace,
    DetectResult,
    EnrollResult,
    FinishedResult,
    FoundFace,
    Quality,
    ReindexResult,
    SearchResult,
    StoredMatch,
    StoredResult,
    StoredSearchFace,
    StoredSearchResult,
    VerifiedFace,
    VerifyResult,
    client_result,
    parse_stored_result,
)
from schemas.streams import JobKind

BOX = (10.0, 20.0, 110.0, 140.0)


def signed(key: str) -> str:
    return f"https://photos.example/{key}?sig=1"


def search_result() -> StoredSearchResult:
    matches = [
        StoredMatch(user_id=7, face_id=70, similarity=0.91, image_key="originals/a"),
        StoredMatch(user_id=8, face_id=80, similarity=0.55, image_key="originals/b"),
    ]
    return StoredSearchResult(
        threshold=0.4,
        model_pack="buffalo_l",
        faces_seen=2,
        faces=[
            StoredSearchFace(box=BOX, score=0.98, matches=matches),
            StoredSearchFace(box=BOX, score=0.7, matches=[]),
        ],
    )


RESULTS: dict[JobKind, StoredResult] = {
    JobKind.ENROLL: EnrollResult(
        user_id=1, face_id=2, faces_seen=3, face=FoundFace(box=BOX, score=0.99), model_pack="buffalo_l"
    ),
    JobKind.SEARCH: search_result(),
    JobKind.VERIFY: VerifyResult(
        threshold=0.4,
        model_pack="dlib",
        similarity=0.83,
        match=True,
        faces=[VerifiedFace(box=BOX, score=0.9, photo=0), VerifiedFace(box=BOX, score=0.8, photo=1)],
    ),
    JobKind.DETECT: DetectResult(
        faces_seen=1,
        faces=[
            DetectedFace(box=BOX, score=0.9, keypoints=[(1.0, 2.0)] * 5, quality=Quality(size=100.0, sharpness=80.5))
        ],
    ),
    JobKind.REINDEX: ReindexResult(face_id=5, model_pack="mbf128_lite"),
}


@pytest.mark.parametrize("kind", list(JobKind))
def test_each_kind_round_trips_through_the_status_hash(kind: JobKind) -> None:
    result = RESULTS[kind]
    assert isinstance(result, STORED_RESULT_TYPES[kind])
    assert parse_stored_result(kind, FinishedResult(result, signed).stored.model_dump_json()) == result


def test_results_keep_the_fields_clients_had() -> None:
    verify = json.loads(RESULTS[JobKind.VERIFY].model_dump_json())
    # A verify of two photos has no user keys at all (not nulls), as before the models.
    assert list(verify) == ["threshold", "model_pack", "similarity", "match", "faces"]
    assert verify["faces"][1] == {"box": list(BOX), "score": 0.8, "photo": 1}
    against_user = VerifyResult(
        threshold=0.4, model_pack="p", user_id=3, face_id=4, faces_compared=2, similarity=0.2, match=False, faces=[]
    )
    assert {"user_id": 3, "face_id": 4, "faces_compared": 2}.items() <= against_user.model_dump().items()
    assert json.loads(RESULTS[JobKind.REINDEX].model_dump_json()) == {"face_id": 5, "model_pack": "mbf128_lite"}
    erased = ReindexResult(face_id=5, model_pack="p", skipped="the face was erased")
    assert json.loads(erased.model_dump_json())["skipped"] == "the face was erased"
    enroll = json.loads(RESULTS[JobKind.ENROLL].model_dump_json())
    assert enroll == {
        "user_id": 1,
        "face_id": 2,
        "faces_seen": 3,
        "face": {"box": list(BOX), "score": 0.99},
        "model_pack": "buffalo_l",
    }
    detect = json.loads(RESULTS[JobKind.DETECT].model_dump_json())
    assert set(detect["faces"][0]) == {"box", "keypoints", "score", "quality"}


def test_clients_get_photo_urls_never_object_keys() -> None:
    delivered = client_result(search_result(), signed)
    assert isinstance(delivered, SearchResult)
    text = delivered.model_dump_json()
    assert "image_key" not in text and "originals/a" in text
    first = json.loads(text)["faces"][0]["matches"][0]
    assert first == {"user_id": 7, "face_id": 70, "similarity": 0.91, "photo_url": signed("originals/a")}
    assert json.loads(text)["faces"][1]["matches"] == []
    for kind in (JobKind.ENROLL, JobKind.VERIFY, JobKind.DETECT, JobKind.REINDEX):
        assert client_result(RESULTS[kind], signed) is RESULTS[kind]  # nothing to sign


@pytest.mark.parametrize("kind", list(JobKind))
def test_a_job_read_back_holds_its_kinds_model(kind: JobKind) -> None:
    job = Job(
        job_id="j",
        kind=kind,
        state="done",
        status_url="u",
        image_key="k",
        result=client_result(RESULTS[kind], signed),
    )
    back = Job.model_validate(json.loads(job.model_dump_json()))  # what FastAPI does with a returned Job
    assert type(back.result) is RESULT_TYPES[kind] and back == job


def test_a_result_of_another_kind_is_refused() -> None:
    stored = RESULTS[JobKind.ENROLL].model_dump_json()
    with pytest.raises(ValidationError):
        parse_stored_result(JobKind.SEARCH, stored)
    with pytest.raises(ValidationError):
        Job.model_validate({**_job(JobKind.DETECT), "result": json.loads(stored)})
    with pytest.raises(ValidationError):  # a stored search result (object keys) is not a client result
        Job.model_validate({**_job(JobKind.SEARCH), "result": json.loads(search_result().model_dump_json())})


def _job(kind: JobKind) -> dict[str, object]:
    return {"job_id": "j", "kind": kind.value, "state": "done", "status_url": "u", "image_key": "k"}


def test_webhook_body_of_a_failed_job_carries_the_error_only() -> None:
    body = WebhookBody(
        job_id="j",
        kind=JobKind.SEARCH,
        state="failed",
        error=api.JobError(code="no_face", message="none"),
        finished_at=1,
    )
    assert json.loads(body.model_dump_json(exclude_none=True)) == {
        "job_id": "j",
        "kind": "search",
        "state": "failed",
        "error": {"code": "no_face", "message": "none"},
        "finished_at": 1.0,
    }


def test_openapi_documents_each_kinds_result() -> None:
    config = ApiConfig(
        redis=s.RedisSettings(),
        s3=s.S3Settings(s3_access_key="unused", s3_secret_key="unused"),
        database=s.DatabaseSettings(main_db_dsn="postgresql://unused", vector_db_dsn="postgresql://unused"),
        model=s.ModelSettings(),
        pipeline=s.PipelineSettings(),
        api=s.ApiSettings(),
    )
    schemas = create_app(config).openapi()["components"]["schemas"]
    refs = [option.get("$ref", "").rsplit("/", 1)[-1] for option in schemas["Job"]["properties"]["result"]["anyOf"]]
    assert refs == ["EnrollResult", "SearchResult", "VerifyResult", "DetectResult", "ReindexResult", ""]
    assert set(schemas["Match"]["required"]) == {"user_id", "face_id", "similarity", "photo_url"}
    assert not any(name.startswith("Stored") for name in schemas)  # internal forms stay out of the document
    assert not hasattr(api, "SearchFace") and not hasattr(api, "Match")  # one home: schemas/results.py
