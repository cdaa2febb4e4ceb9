"""Reading the API's JSON into the client's dataclasses: what a newer or an older server may send, and what is not
the API's at all. No server: the answers are written out here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fecapass_client import EnrollResult, InvalidResponse, Match, Me, ReturnedFace, SearchResult, User
from fecapass_client.models import parse, parse_job

USER = {
    "id": 7,
    "email": "ada@example.com",
    "full_name": "Ada",
    "is_active": True,
    "created_at": "2026-12-01T10:55:14.642956Z",
    "updated_at": "2026-12-01T10:55:14Z",
    "collection": "default",
    "external_id": None,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:55:14Z", datetime(2026, 12, 1, 10, 55, 14, tzinfo=UTC)),
        ("2026-12-01T10:55:14.5Z", datetime(2026, 12, 1, 10, 55, 14, 500000, tzinfo=UTC)),
        ("2026-12-01T10:55:14.1234567Z", datetime(2026, 12, 1, 10, 55, 14, 123456, tzinfo=UTC)),
        ("2026-12-01T10:55:14.000123+02:00", datetime(2026, 12, 1, 8, 55, 14, 123, tzinfo=UTC)),
        ("2026-12-01T10:55:14", datetime(2026, 12, 1, 10, 55, 14, tzinfo=UTC)),
    ],
)
def test_times_in_every_iso_form_the_api_may_write(text: str, expected: datetime) -> None:
    parsed = parse(User, {**USER, "created_at": text}).created_at
    assert parsed == expected and parsed.utcoffset() is not None


def test_fields_a_newer_server_adds_are_ignored() -> None:
    user = parse(User, {**USER, "a_field_from_the_future": [1, 2]})
    assert (user.collection, user.external_id) == ("default", None)
    assert parse(User, {**USER, "collection": "site-a", "external_id": "E-1"}).external_id == "E-1"
    assert user.created_at - user.updated_at == timedelta(microseconds=642956)


def test_optional_fields_left_out_default_and_a_keys_collections_are_a_tuple() -> None:
    match = {"user_id": 1, "face_id": 2, "similarity": 0.7, "photo_url": "http://s3/x"}
    assert parse(Match, match).external_id is None  # the API leaves it out for a person without one
    assert parse(Match, {**match, "external_id": "E-1"}).external_id == "E-1"
    assert parse(Me, {"scope": "read"}).collections is None
    assert parse(Me, {"scope": "read", "collections": None}).collections is None
    assert parse(Me, {"scope": "write", "collections": ["site-a", "site-b"]}).collections == ("site-a", "site-b")
    returned = {"face_id": 2, "user_id": 1, "unknown_face_id": 3, "cluster_id": None}
    assert parse(ReturnedFace, returned).cluster_id is None
    with pytest.raises(InvalidResponse):  # required by the API, even when null
        parse(ReturnedFace, {key: value for key, value in returned.items() if key != "cluster_id"})


@pytest.mark.parametrize(
    "broken",
    [
        {key: value for key, value in USER.items() if key != "email"},  # a required field missing
        {key: value for key, value in USER.items() if key != "collection"},  # required since collections exist
        {key: value for key, value in USER.items() if key != "external_id"},  # required, null when unset
        {**USER, "collection": None},
        {**USER, "id": None},
        {**USER, "id": "7"},  # a string is not an id
        {**USER, "is_active": 1},  # nor 1 a boolean
        {**USER, "created_at": "yesterday"},
        [USER],
        "<html>",
    ],
)
def test_what_is_not_the_apis_answer_is_invalid_response(broken: Any) -> None:
    with pytest.raises(InvalidResponse) as invalid:
        parse(User, broken)
    assert invalid.value.code == "invalid_response"


def test_a_jobs_result_is_its_kinds_model() -> None:
    base = {"job_id": "j", "status_url": "u", "image_key": "k", "state": "done"}
    face = {"box": [1, 2, 3, 4], "score": 0.9}
    enroll = parse_job(
        {
            **base,
            "kind": "enroll",
            "result": {"user_id": 1, "face_id": 2, "faces_seen": 1, "face": face, "model_pack": "p"},
        }
    )
    assert isinstance(enroll.result, EnrollResult) and enroll.result.face.box == (1.0, 2.0, 3.0, 4.0)
    match = {"user_id": 1, "face_id": 2, "similarity": 0.7, "photo_url": "http://s3/x"}
    search = parse_job(
        {
            **base,
            "kind": "search",
            "result": {"threshold": 0.3, "model_pack": "p", "faces_seen": 1, "faces": [{**face, "matches": [match]}]},
        }
    )
    assert isinstance(search.result, SearchResult) and search.result.faces[0].matches[0].similarity == 0.7
    assert search.result.threshold_source is None  # a result stored before the field existed
    future = parse_job({**base, "kind": "cluster", "result": {"clusters": 3}})
    assert future.result == {"clusters": 3} and future.kind == "cluster"
    failed = parse_job({**base, "kind": "enroll", "state": "failed", "error": {"code": "no_face", "message": "none"}})
    assert failed.failed and failed.error is not None and failed.error.code == "no_face" and failed.result is None
    with pytest.raises(InvalidResponse):
        parse_job({**base, "kind": "enroll", "result": {"user_id": 1}})
