from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.streams import (
    PIPELINE,
    SCHEMA_VERSION,
    AlignedFace,
    AlignedMessage,
    DetectedMessage,
    EmbeddedMessage,
    FaceBox,
    JobKind,
    JobMessage,
    MalformedMessage,
    Stage,
    StreamMessage,
    WebhookMessage,
    encode_embeddings,
)
from schemas.text import decode_fields, decode_text

coordinate = st.floats(min_value=0, max_value=10_000, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def faces(draw: st.DrawFn) -> FaceBox:
    x1, y1 = draw(coordinate), draw(coordinate)
    return FaceBox(
        box=(x1, y1, x1 + draw(coordinate), y1 + draw(coordinate)),
        keypoints=[(draw(coordinate), draw(coordinate)) for _ in range(5)],
        score=draw(st.floats(min_value=0, max_value=1)),
        source=draw(st.sampled_from([0, 1])),
    )


def wire(message: StreamMessage) -> dict[bytes, bytes]:
    """The entry as Redis hands it back: bytes, after checking it went in as flat readable strings."""
    fields = message.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    return {str(k).encode(): str(v).encode() for k, v in fields.items()}


def job(**fields: object) -> JobMessage:
    return JobMessage.model_validate({"job_id": "abc", "kind": "search", "image_key": "originals/abc", **fields})


def detected(face_list: list[FaceBox] | None = None) -> DetectedMessage:
    face = FaceBox(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=0.9)
    return job(pack="p").advance(DetectedMessage, faces=face_list or [face], faces_seen=3, crop_size=112)


def aligned(count: int = 1) -> AlignedMessage:
    message = detected([FaceBox(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=0.9)] * count)
    crops = [AlignedFace(**dict(face), crop_key=f"crops/abc/{i}.png") for i, face in enumerate(message.faces)]
    return message.advance(AlignedMessage, faces=crops)


@given(
    kind=st.sampled_from(JobKind),
    user_id=st.none() | st.integers(min_value=1, max_value=2**62),
    threshold=st.none() | st.floats(min_value=-1, max_value=1),
    callback=st.none() | st.just("https://example.com/hook?a=1&b=2"),
)
def test_job_round_trips_through_flat_string_fields(
    kind: JobKind, user_id: int | None, threshold: float | None, callback: str | None
) -> None:
    message = JobMessage(
        job_id="abc",
        kind=kind,
        image_key="originals/abc",
        user_id=user_id,
        threshold=threshold,
        callback_url=callback,
        pack="mbf128_lite",
    )
    assert JobMessage.from_fields(wire(message)) == message


@given(face_list=st.lists(faces(), min_size=1, max_size=4), seen=st.integers(min_value=1, max_value=100))
def test_every_stage_output_round_trips_as_the_next_stage_input(face_list: list[FaceBox], seen: int) -> None:
    found = job(pack="p", user_id=5).advance(DetectedMessage, faces=face_list, faces_seen=seen, crop_size=112)
    assert DetectedMessage.from_fields(wire(found)) == found
    crops = [AlignedFace(**dict(face), crop_key=f"crops/abc/{i}.png") for i, face in enumerate(found.faces)]
    cropped = found.advance(AlignedMessage, faces=crops)
    assert AlignedMessage.from_fields(wire(cropped)) == cropped
    matrix = np.arange(len(face_list) * 4, dtype=np.float32).reshape(-1, 4)
    embedded = cropped.advance(EmbeddedMessage, embeddings=encode_embeddings(matrix), dim=4)
    back = EmbeddedMessage.from_fields(wire(embedded))
    assert back == embedded and back.user_id == 5 and back.faces_seen == seen
    np.testing.assert_array_equal(back.embedding_matrix(), matrix)
    # Each stage's message is readable as what the earlier stages wrote, so the runner's webhook and status
    # code can treat every one as a job.
    assert JobMessage.from_fields(wire(embedded)).model_dump() == job(pack="p", user_id=5).model_dump()


def test_fields_stay_readable_strings_for_operators() -> None:
    fields = aligned(2).to_fields()
    assert fields["v"] == SCHEMA_VERSION == "1"
    assert fields["faces"].startswith('[{"box":[0.0,0.0,1.0,1.0]')  # type: ignore[union-attr]
    assert '"crop_key":"crops/abc/1.png"' in fields["faces"]  # type: ignore[operator]
    assert fields["faces_seen"] == "3" and fields["crop_size"] == "112" and fields["pack"] == "p"


def test_entries_written_before_the_split_still_parse() -> None:
    # An index-stream entry as the single PipelineMessage model (schema version 1) wrote it.
    old = {
        b"v": b"1",
        b"job_id": b"j1",
        b"kind": b"enroll",
        b"image_key": b"originals/j1",
        b"user_id": b"7",
        b"faces": b'[{"box":[1.0,2.0,30.0,40.0],"keypoints":[[1.0,1.0],[2.0,2.0],[3.0,3.0],[4.0,4.0],[5.0,5.0]],'
        b'"score":0.98,"source":0,"crop_key":"crops/j1/0.png"}]',
        b"faces_seen": b"2",
        b"embeddings": base64.b64encode(encode_embeddings(np.ones((1, 2)))),
        b"dim": b"2",
        b"pack": b"buffalo_l",
        b"crop_size": b"112",
    }
    message = EmbeddedMessage.from_fields(old)
    assert message.user_id == 7 and message.faces[0].crop_key == "crops/j1/0.png" and message.pack == "buffalo_l"
    np.testing.assert_array_equal(message.embedding_matrix(), np.ones((1, 2)))
    # The same entry is a valid input of each earlier stage too (extra fields are ignored).
    assert AlignedMessage.from_fields(old).faces == message.faces
    assert JobMessage.from_fields(old).image_key == "originals/j1"


def test_embeddings_round_trip_exactly() -> None:
    matrix = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    message = aligned(3).advance(EmbeddedMessage, embeddings=encode_embeddings(matrix), dim=512)
    back = EmbeddedMessage.from_fields(message.to_fields())
    np.testing.assert_array_equal(back.embedding_matrix(), matrix)


BASE = {"v": "1", "job_id": "j", "kind": "search", "image_key": "k", "pack": "p"}
FACE = '[{"box":[0,0,1,1],"keypoints":[[0,0]],"score":0.9}]'
CROPPED = '[{"box":[0,0,1,1],"keypoints":[[0,0]],"score":0.9,"crop_key":"crops/j/0.png"}]'
DETECTED = {**BASE, "faces": FACE, "faces_seen": "1", "crop_size": "112"}
ALIGNED = {**DETECTED, "faces": CROPPED}


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (JobMessage, {}),
        (JobMessage, {**BASE, "v": "99"}),
        (JobMessage, {**BASE, "v": None}),
        (JobMessage, {**BASE, "kind": "paint"}),
        (JobMessage, {"v": "1", "job_id": "j", "kind": "enroll"}),
        (JobMessage, {**BASE, "user_id": "seven"}),
        (JobMessage, {**BASE, "face_box": "1,2,3"}),
        (JobMessage, {b"v": b"1", b"job_id": b"\xff\xfe", b"kind": b"search"}),  # non-UTF-8 and no image_key
        # What the align stage needs: faces, how many were seen, the pack and its crop size.
        (DetectedMessage, BASE),
        (DetectedMessage, {**DETECTED, "faces": "[{not json"}),
        (DetectedMessage, {**DETECTED, "faces": "[]"}),
        (DetectedMessage, {**DETECTED, "faces": '[{"box":[0,0,1],"keypoints":[],"score":0.9}]'}),
        (DetectedMessage, {key: value for key, value in DETECTED.items() if key != "pack"}),
        (DetectedMessage, {key: value for key, value in DETECTED.items() if key != "crop_size"}),
        (DetectedMessage, {key: value for key, value in DETECTED.items() if key != "faces_seen"}),
        # What the embed stage needs: a crop for every face.
        (AlignedMessage, DETECTED),
        # What the index stage needs: the embeddings, base64 of float32, and their dimension.
        (EmbeddedMessage, ALIGNED),
        (EmbeddedMessage, {**ALIGNED, "embeddings": "@@@", "dim": "2"}),
        (EmbeddedMessage, {**ALIGNED, "embeddings": "AAAAAA==", "dim": "two"}),
        (WebhookMessage, {"v": "1", "job_id": "j"}),
    ],
)
def test_malformed_entries_are_rejected_with_a_reason(model: type[StreamMessage], fields: dict[object, object]) -> None:
    fields = {key: value for key, value in fields.items() if value is not None}
    with pytest.raises(MalformedMessage) as raised:
        model.from_fields(fields)
    assert str(raised.value)


def test_embedding_size_must_match_faces() -> None:
    message = aligned(2).advance(EmbeddedMessage, embeddings=encode_embeddings(np.zeros((1, 4))), dim=4)
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


def test_reindex_message_round_trip() -> None:
    message = JobMessage(
        job_id="reindex-mbf128_lite-7",
        kind=JobKind.REINDEX,
        image_key="originals/abc",
        pack="mbf128_lite",
        face_id=7,
        face_box=(10.5, 20.0, 110.25, 140.0),
    )
    fields = message.to_fields()
    assert fields["face_box"] == "10.5,20.0,110.25,140.0" and fields["kind"] == "reindex"
    assert JobMessage.from_fields(fields) == message
    with pytest.raises(MalformedMessage):
        JobMessage.from_fields({**fields, "face_box": "1,2,3"})


def test_decoding_never_raises_on_bytes_that_are_not_utf8() -> None:
    assert decode_text(b"caf\xc3\xa9") == "café"
    assert decode_text(b"\xff\xfejob") == "\\xff\\xfejob"  # the bytes stay visible to whoever reads it
    assert decode_text(memoryview(b"ok")) == "ok" and decode_text(7) == "7" and decode_text("s") == "s"
    assert decode_fields({b"job_id": b"\x80", "kind": b"search"}) == {"job_id": "\\x80", "kind": "search"}


@given(
    st.dictionaries(
        st.one_of(st.binary(max_size=8), st.text(max_size=8)),
        st.one_of(st.binary(max_size=16), st.text(max_size=16), st.integers(), st.builds(memoryview, st.binary())),
        max_size=6,
    )
)
def test_decoding_fields_gives_the_text_of_each_key_and_value_whatever_they_are(raw: dict[object, object]) -> None:
    # The UTF-8 fast path a stage takes for every entry must read exactly as the lenient decoding of each part.
    assert decode_fields(raw) == {decode_text(key): decode_text(value) for key, value in raw.items()}
