"""Job results: one model per job kind, built by the stage that finishes the job, stored as their JSON in the
job's status hash, and parsed back into the same models by the API.

A result is stored in one form and delivered in another only where it names a photo: a search match stores the
enrolled photo's object key (``StoredMatch.image_key``) and clients get a short-lived presigned URL instead
(``Match.photo_url``). ``client_result`` is the one conversion; the API's job responses and the webhook bodies
both go through it, so a webhook carries exactly the result ``GET /v1/jobs/{id}`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from schemas.streams import JobKind

Box = Annotated[tuple[float, float, float, float], Field(description="x1, y1, x2, y2 in pixels of the photo")]
# Turns an object key into a URL a client can fetch (presigned, short-lived).
Presign = Callable[[str], str]


def _absent(value: object) -> bool:
    return value is None


def omitted_unless_set(description: str) -> Any:
    """An optional result field that is left out of the JSON when unset, as results always had it: a verify
    against a second photo has no ``user_id`` key at all rather than ``"user_id": null``."""
    return Field(default=None, description=description, exclude_if=_absent)


class FoundFace(BaseModel):
    box: Box
    score: float = Field(description="detection confidence (the pack's scale)")


class Quality(BaseModel):
    size: float = Field(description="shorter side of the face box, in pixels")
    sharpness: float = Field(description="variance of the Laplacian of the face; below about 50 it is blurred")


class DetectedFace(FoundFace):
    keypoints: list[tuple[float, float]] = Field(description="5 landmarks (x, y) in the pack's convention")
    quality: Quality


class VerifiedFace(FoundFace):
    photo: int = Field(description="0: the photo `file`, 1: `second_file`")


class MatchBase(BaseModel):
    user_id: int
    face_id: int
    similarity: float = Field(
        description="cosine similarity of the two face embeddings, -1..1; same person above the threshold"
    )
    # Left out when unset, like the other optional result fields: a webhook body (its JSON without nulls) and the
    # API's result stay the same.
    external_id: str | None = omitted_unless_set("the user's external id, when they have one")


class StoredMatch(MatchBase):
    image_key: str = Field(description="object key of the enrolled photo; never shown to clients")


class Match(MatchBase):
    photo_url: str = Field(description="the enrolled photo; presigned, expires after FECAPASS_PRESIGN_SECONDS")


class StoredSearchFace(FoundFace):
    matches: list[StoredMatch]


class SearchFace(FoundFace):
    matches: list[Match] = Field(description="distinct people, most similar first")


class EnrollResult(BaseModel):
    user_id: int
    face_id: int
    faces_seen: int = Field(description="faces found in the photo; the largest was enrolled")
    face: FoundFace
    model_pack: str


# Where a search's threshold came from: the request's `threshold`, FECAPASS_SIMILARITY_THRESHOLD, or the rule that
# picks it from the gallery's size (at most FECAPASS_FALSE_MATCHES_PER_SEARCH false matches expected per search).
ThresholdSource = Literal["request", "setting", "gallery"]


class SearchSummary(BaseModel):
    threshold: float
    model_pack: str
    faces_seen: int
    # Optional only so that results stored before these fields existed still parse; every new search sets them.
    threshold_source: ThresholdSource | None = omitted_unless_set(
        "why this threshold: request (the request's threshold), setting (FECAPASS_SIMILARITY_THRESHOLD) or gallery"
        " (chosen from gallery_size so that a search expects at most FECAPASS_FALSE_MATCHES_PER_SEARCH false matches)"
    )
    gallery_size: int | None = omitted_unless_set("faces of the pack that the search compared the photo with")


class StoredSearchResult(SearchSummary):
    faces: list[StoredSearchFace]

    def for_client(self, presign: Presign) -> SearchResult:
        faces = [
            SearchFace(
                box=face.box,
                score=face.score,
                matches=[
                    Match(
                        user_id=match.user_id,
                        face_id=match.face_id,
                        similarity=match.similarity,
                        external_id=match.external_id,
                        photo_url=presign(match.image_key),
                    )
                    for match in face.matches
                ],
            )
            for face in self.faces
        ]
        return SearchResult(
            threshold=self.threshold,
            model_pack=self.model_pack,
            faces_seen=self.faces_seen,
            threshold_source=self.threshold_source,
            gallery_size=self.gallery_size,
            faces=faces,
        )


class SearchResult(SearchSummary):
    faces: list[SearchFace] = Field(description="every face of the photo, each with its own matches")


class VerifyResult(BaseModel):
    threshold: float
    model_pack: str
    user_id: int | None = omitted_unless_set("verify against a user: that user")
    face_id: int | None = omitted_unless_set("verify against a user: their most similar face")
    faces_compared: int | None = omitted_unless_set("verify against a user: their faces compared")
    similarity: float
    match: bool = Field(description="similarity >= threshold")
    faces: list[VerifiedFace]


class DetectResult(BaseModel):
    faces_seen: int
    faces: list[DetectedFace]


class ReindexResult(BaseModel):
    face_id: int
    model_pack: str
    skipped: str | None = omitted_unless_set("why no embedding was added (the face was erased meanwhile)")


# Results that name no photo are the same stored and delivered.
PlainResult = EnrollResult | VerifyResult | DetectResult | ReindexResult
StoredResult = EnrollResult | StoredSearchResult | VerifyResult | DetectResult | ReindexResult
JobResult = EnrollResult | SearchResult | VerifyResult | DetectResult | ReindexResult

STORED_RESULT_TYPES: dict[JobKind, type[StoredResult]] = {
    JobKind.ENROLL: EnrollResult,
    JobKind.SEARCH: StoredSearchResult,
    JobKind.VERIFY: VerifyResult,
    JobKind.DETECT: DetectResult,
    JobKind.REINDEX: ReindexResult,
}
RESULT_TYPES: dict[JobKind, type[JobResult]] = {
    JobKind.ENROLL: EnrollResult,
    JobKind.SEARCH: SearchResult,
    JobKind.VERIFY: VerifyResult,
    JobKind.DETECT: DetectResult,
    JobKind.REINDEX: ReindexResult,
}


def parse_stored_result(kind: JobKind, text: str) -> StoredResult:
    """A result as the status hash holds it (its JSON), read back into its kind's model."""
    return STORED_RESULT_TYPES[kind].model_validate_json(text)


def client_result(result: StoredResult, presign: Presign) -> JobResult:
    """The result as clients get it: photo keys become presigned URLs."""
    if isinstance(result, StoredSearchResult):
        return result.for_client(presign)
    return result


def result_for_kind(data: Any) -> Any:
    """Before validation of a model with ``kind`` and ``result`` (a job, a webhook body): parse a ``result``
    mapping as its kind's model. The kinds' results share field names, so a plain union would guess."""
    if isinstance(data, dict) and isinstance(data.get("result"), dict) and data.get("kind") is not None:
        kind = JobKind(data["kind"])
        return {**data, "result": RESULT_TYPES[kind].model_validate(data["result"])}
    return data


@dataclass(frozen=True)
class FinishedResult:
    """What the stage that finishes a job hands the runner: the result to store in the status hash, and how to
    sign its photo URLs for the webhook body. The stage that finishes a search holds the object store, so the
    webhook sender needs no S3 credentials."""

    stored: StoredResult
    presign: Presign

    @property
    def client(self) -> JobResult:
        """The result as clients get it; built only when asked for (a webhook is due): it signs a URL per match."""
        return client_result(self.stored, self.presign)

    @classmethod
    def without_photos(cls, result: PlainResult) -> FinishedResult:
        return cls(stored=result, presign=_nothing_to_sign)


def _nothing_to_sign(key: str) -> str:
    raise AssertionError(f"a result without photos named {key}")
