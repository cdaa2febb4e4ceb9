from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.streams import (
    PIPELINE,
    FaceBox,
    JobKind,
    MalformedMessage,
    PipelineMessage,
    Stage,
    WebhookMessage,
    encode_embeddings,
)

coordinate = st.floats(min_value=0, max_value=10_000, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def faces(draw: st.DrawFn) -> FaceBox:
    x1, y1 = draw(coordinate), draw(coordinate)
    return FaceBox(
        box=(x1, y1, x1 + draw(coordinate), y1 + draw(coordinate)),
        keypoints=[(draw(coordinate), draw(coordinate)) for _ in range(5)],
        score=draw(st.floats(min_value=0, max_value=1)),
        crop_key=draw(st.none() | st.just("crops/j/0.png")),
    )


@given(
    kind=st.sampled_from(JobKind),
    user_id=st.none() | st.integers(min_value=1, max_value=2**62),
    face_list=st.none() | st.lists(faces(), max_size=4),
    threshold=st.none() | st.floats(min_value=-1, max_value=1),
)
def test_round_trip_through_flat_string_fields(
    kind: JobKind, user_id: int | None, face_list: list[FaceBox] | None, threshold: float | None
) -> None:
    message = PipelineMessage(
        job_id="abc",
        kind=kind,
        image_key="originals/abc",
        user_id=user_id,
        faces=face_list,
        threshold=threshold,
    )
    fields = message.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    # Redis hands fields back as bytes.
    wire = {k.encode(): v.encode() for k, v in fields.items()}
    assert PipelineMessage.from_fields(wire) == message


def test_embeddings_round_trip_exactly() -> None:
    matrix = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    face = FaceBox(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=0.9)
    message = PipelineMessage(
        job_id="j",
        kind=JobKind.SEARCH,
        image_key="k",
        faces=[face] * 3,
        embeddings=encode_embeddings(matrix),
        dim=512,
        pack="p",
    )
    back = PipelineMessage.from_fields(message.to_fields())
    np.testing.assert_array_equal(back.embedding_matrix(), matrix)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"v": "99", "job_id": "j", "kind": "enroll", "image_key": "k"},
        {"v": "1", "job_id": "j", "kind": "paint", "image_key": "k"},
        {"v": "1", "job_id": "j", "kind": "enroll"},
        {"v": "1", "job_id": "j", "kind": "enroll", "image_key": "k", "faces": "[{not json"},
        {"v": "1", "job_id": "j", "kind": "enroll", "image_key": "k", "embeddings": "@@@"},
        {b"v": b"1", b"job_id": b"\xff\xfe", b"kind": b"search"},
    ],
)
def test_malformed_entries_are_rejected_with_a_reason(fields: dict[object, object]) -> None:
    with pytest.raises(MalformedMessage):
        PipelineMessage.from_fields(fields)


def test_embedding_size_must_match_faces() -> None:
    face = FaceBox(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=0.9)
    message = PipelineMessage(
        job_id="j",
        kind=JobKind.SEARCH,
        image_key="k",
        faces=[face, face],
        embeddings=encode_embeddings(np.zeros((1, 4))),
        dim=4,
    )
    with pytest.raises(MalformedMessage):
        message.embedding_matrix()


def test_stage_names_and_order() -> None:
    assert [stage.stream for stage in PIPELINE] == [
        "fecapass:detect",
        "fecapass:align",
        "fecapass:embed",
        "fecapass:index",
    ]
    assert Stage.DETECT.next is Stage.ALIGN and Stage.INDEX.next is None and Stage.WEBHOOK.next is None
    assert Stage.EMBED.dead_letter_stream == "fecapass:embed:dead"


def test_webhook_message_round_trip() -> None:
    message = WebhookMessage(job_id="j", url="https://example.com/hook", body='{"state":"done"}')
    assert WebhookMessage.from_fields(message.to_fields()) == message
    with pytest.raises(MalformedMessage):
        WebhookMessage.from_fields({"v": "1", "job_id": "j"})


def test_reindex_message_round_trip() -> None:
    message = PipelineMessage(
        job_id="reindex-mbf128_lite-7",
        kind=JobKind.REINDEX,
        image_key="originals/abc",
        pack="mbf128_lite",
        face_id=7,
        face_box=(10.5, 20.0, 110.25, 140.0),
    )
    fields = message.to_fields()
    assert fields["face_box"] == "10.5,20.0,110.25,140.0" and fields["kind"] == "reindex"
    assert PipelineMessage.from_fields(fields) == message
    with pytest.raises(MalformedMessage):
        PipelineMessage.from_fields({**fields, "face_box": "1,2,3"})
