"""Stream names, consumer groups and the flat string messages carried between stages.

Every stream entry is a flat map of readable strings, so operators can read it with
``redis-cli XRANGE``. Structured parts (faces) are compact JSON strings; embeddings are
base64 of little-endian float32, the only binary-ish field, and it never holds image bytes.

Each stage reads its own model, and each stage's output is the next one's input with the stage's fields added:
``JobMessage`` (what the API or ``fecapass reindex`` submits; the detect stage reads it) -> ``DetectedMessage``
(+ faces, faces_seen, crop_size, and per face the region of the photo to warp; align) -> ``AlignedMessage``
(+ a crop per face; embed) -> ``EmbeddedMessage``
(+ embeddings, dim; index). An entry that lacks what its stage needs fails validation and is dead-lettered as
malformed. The wire layout is the same for every version of these models (version ``1``), so entries written
before the split still parse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Self, TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError
from redis.typing import EncodableT, FieldT

from schemas.text import decode_fields

SCHEMA_VERSION = "1"
STREAM_PREFIX = "fecapass"


class Stage(StrEnum):
    DETECT = "detect"
    ALIGN = "align"
    EMBED = "embed"
    INDEX = "index"
    WEBHOOK = "webhook"  # delivers finished jobs to their callback_url; not part of the face pipeline

    @property
    def stream(self) -> str:
        return f"{STREAM_PREFIX}:{self.value}"

    @property
    def group(self) -> str:
        return self.value

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"

    @property
    def next(self) -> Stage | None:
        if self not in PIPELINE:
            return None
        index = PIPELINE.index(self)
        return PIPELINE[index + 1] if index + 1 < len(PIPELINE) else None


# The face pipeline, in order.
PIPELINE = (Stage.DETECT, Stage.ALIGN, Stage.EMBED, Stage.INDEX)


class JobKind(StrEnum):
    ENROLL = "enroll"  # store the largest face for user_id
    SEARCH = "search"  # who are the faces of the photo?
    VERIFY = "verify"  # is the largest face user_id, or the largest face of second_image_key?
    DETECT = "detect"  # faces only; finishes in the detect stage
    REINDEX = "reindex"  # embed the enrolled face face_id again, with another pack (`fecapass reindex`)


class MalformedMessage(ValueError):
    """A stream entry that no version of this code can read; retrying cannot help."""


class FaceBox(BaseModel):
    """One detected face in original-image pixel coordinates."""

    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2")
    keypoints: list[tuple[float, float]] = Field(
        description="5 landmarks in the pack's convention: InsightFace eye centres, nose tip, mouth corners;"
        " dlib the corners of each eye and the base of the nose"
    )
    score: float
    source: int = Field(default=0, description="0: the job's photo, 1: its second photo (verify)")
    # Detect -> align only (absent from entries written before regions, and from every later stage's entry).
    region_key: str | None = Field(
        default=None, description="transient blob of the photo pixels the align stage warps: raw BGR, row by row"
    )
    region_box: tuple[int, int, int, int] | None = Field(
        default=None, description="where those pixels are in the photo: x1, y1, x2, y2 (the far ones excluded)"
    )

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class AlignedFace(FaceBox):
    """A face whose aligned crop the align stage stored."""

    crop_key: str


class StreamMessage(BaseModel):
    """A versioned stream entry of flat string fields."""

    v: str = SCHEMA_VERSION
    job_id: str

    def to_fields(self) -> dict[FieldT, EncodableT]:
        """Flat readable strings, as XADD takes them."""
        return {name: self._encode(name, value) for name, value in self if value is not None}

    def _encode(self, name: str, value: Any) -> str:
        return str(value)

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> Self:
        fields = decode_fields(raw)
        version = fields.get("v")
        if version != SCHEMA_VERSION:
            raise MalformedMessage(f"unsupported schema version {version!r}")
        try:
            return cls.model_validate(cls._decode(dict(fields)))
        except (ValueError, ValidationError) as exc:
            raise MalformedMessage(str(exc).splitlines()[0]) from exc


class WebhookMessage(StreamMessage):
    """A finished job to POST to its callback URL; ``body`` is the exact JSON that is signed and sent."""

    url: str
    body: str


M = TypeVar("M", bound="JobMessage")


class JobMessage(StreamMessage):
    """A submitted job: what the API and `fecapass reindex` queue on the detect stream, and what every later
    stage's message carries on."""

    kind: JobKind
    image_key: str
    second_image_key: str | None = None
    user_id: int | None = None
    collection_id: int = Field(
        default=1, description="the collection the job works in: enroll's person's, search's and verify's gallery"
    )
    external_id: str | None = Field(default=None, description="enroll: the client's id for the new face")
    threshold: float | None = None
    limit: int | None = None
    pack: str | None = Field(
        default=None, description="model pack of every stage of this job: the active pack when it was submitted"
    )
    face_id: int | None = Field(default=None, description="reindex: the enrolled face to embed again")
    face_box: tuple[float, float, float, float] | None = Field(
        default=None, description="reindex: where that face was found when it was enrolled (x1, y1, x2, y2)"
    )
    callback_url: str | None = Field(default=None, description="where the finished job is POSTed")

    def _encode(self, name: str, value: Any) -> str:
        if name == "face_box":
            return ",".join(str(v) for v in value)
        return str(value)

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "face_box" in data:
            data["face_box"] = data["face_box"].split(",")
        return data

    @property
    def image_keys(self) -> list[str]:
        """The job's photos, indexed by ``FaceBox.source``."""
        return [self.image_key] + ([self.second_image_key] if self.second_image_key else [])

    def advance(self, model: type[M], **added: Any) -> M:
        """The next stage's message: every field of this one plus what this stage adds, validated as ``model``."""
        return model.model_validate({**dict(self), **added})


class DetectedMessage(JobMessage):
    """The align stage's input: the detect stage chose the faces and the pack."""

    pack: str
    crop_size: int = Field(description="side of the pack's aligned crop")
    faces: Sequence[FaceBox] = Field(min_length=1)
    faces_seen: int = Field(description="faces found in the job's (first) photo")

    def _encode(self, name: str, value: Any) -> str:
        if name == "faces":
            return json.dumps([face.model_dump(exclude_none=True) for face in value], separators=(",", ":"))
        return super()._encode(name, value)

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "faces" in data:
            data["faces"] = json.loads(data["faces"])
        return super()._decode(data)


class AlignedMessage(DetectedMessage):
    """The embed stage's input: every face has its crop."""

    faces: Sequence[AlignedFace] = Field(min_length=1)


class EmbeddedMessage(AlignedMessage):
    """The index stage's input: one embedding per face."""

    embeddings: bytes = Field(description="float32 [len(faces), dim], base64 on the wire")
    dim: int

    def _encode(self, name: str, value: Any) -> str:
        if name == "embeddings":
            return base64.b64encode(value).decode("ascii")
        return super()._encode(name, value)

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "embeddings" in data:
            data["embeddings"] = base64.b64decode(data["embeddings"], validate=True)
        return super()._decode(data)

    def embedding_matrix(self) -> np.ndarray:
        matrix = np.frombuffer(self.embeddings, dtype="<f4")
        if matrix.size != self.dim * len(self.faces):
            raise MalformedMessage("embedding size does not match faces x dim")
        return matrix.reshape(len(self.faces), self.dim)


def encode_embeddings(matrix: np.ndarray) -> bytes:
    return np.ascontiguousarray(matrix, dtype="<f4").tobytes()
