"""HTTP API request and response models (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import email_validator
from pydantic import AfterValidator, BaseModel, Field, StrictBool, WithJsonSchema, model_validator

from schemas.jobs import JobState
from schemas.results import JobResult, result_for_kind
from schemas.streams import JobKind

# PostgreSQL text cannot hold NUL; refuse it with a 422 rather than fail on insert.
FullName = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]
# A client's own id for a person or a face (an HR number, another system's key): unique per collection.
ExternalId = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$", description="the client's id, unique per collection"),
]
# As the collections table checks it (migration 0005): lower case, digits, - and _, up to 63 characters.
COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
CollectionName = Annotated[str, Field(pattern=COLLECTION_NAME_PATTERN, description="a collection's name")]
DEFAULT_COLLECTION = "default"


def _valid_email(value: str) -> str:
    """The address, normalised, if its syntax is valid (RFC 5321/5322). Unlike pydantic's EmailStr, addresses on
    the special-use .test domain and on dotless intranet domains (user@host.test, user@intranet) are accepted: the
    API sends no mail and only checks syntax. .local, .localhost, .invalid, .onion and .arpa stay refused."""
    try:
        return email_validator.validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        ).normalized
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None


Email = Annotated[str, AfterValidator(_valid_email), WithJsonSchema({"type": "string", "format": "email"})]


class UserCreate(BaseModel):
    email: Email
    full_name: FullName = ""
    collection: CollectionName = Field(default=DEFAULT_COLLECTION, description="the collection the person is in")
    external_id: ExternalId | None = None


class UserUpdate(BaseModel):
    email: Email | None = None
    full_name: FullName | None = None
    # Only JSON true or false: "off", 0 or "1" would each flip a person's status by a guess.
    is_active: StrictBool | None = None
    external_id: ExternalId | None = Field(default=None, description="set it; an explicit null removes it")


class User(BaseModel):
    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    collection: str = Field(description="the collection the person is in")
    external_id: str | None = Field(description="the client's id for the person; null when unset")


class UserPage(BaseModel):
    items: list[User]
    next_after: int | None = Field(description="pass as `after` for the next page; null on the last page")


class Face(BaseModel):
    id: int
    user_id: int
    collection: str = Field(description="the collection of the face's person")
    external_id: str | None = Field(description="the client's id for the face; null when unset")
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the enrolled photo")
    det_score: float
    faces_seen: int = Field(description="faces found in the enrolled photo; the largest was enrolled")
    model_pack: str
    created_at: datetime
    photo_url: str = Field(description="presigned, expires after FECAPASS_PRESIGN_SECONDS")
    crop_url: str = Field(description="the aligned face crop; presigned, expires likewise")


class CollectionCreate(BaseModel):
    name: CollectionName


class Collection(BaseModel):
    name: str
    keep_unknown_faces: bool = Field(description="whether faces of searches that matched nobody are kept")
    unknown_retention_hours: int
    created_at: datetime


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """A job's state; ``result`` is set when ``state`` is ``done``, ``error`` when it is ``failed``."""

    job_id: str
    kind: JobKind
    state: JobState
    status_url: str
    image_key: str
    user_id: int | None = None
    model_pack: str | None = Field(default=None, description="the pack every stage of this job uses")
    created_at: float | None = Field(default=None, description="Unix time")
    finished_at: float | None = None
    stages: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per stage: started_at / finished_at, Unix time"
    )
    faces_seen: int | None = None
    query_time_ms: float | None = Field(default=None, description="from upload to result, once finished")
    error: JobError | None = None
    result: JobResult | None = Field(default=None, description="once done: the result model of the job's kind")

    _result_for_kind = model_validator(mode="before")(result_for_kind)


class WebhookBody(BaseModel):
    """What is POSTed to a job's ``callback_url`` once it finishes: ``result`` exactly as ``GET /v1/jobs/{id}``
    returns it (done), or ``error`` (failed)."""

    job_id: str
    kind: JobKind
    state: JobState
    result: JobResult | None = None
    error: JobError | None = None
    finished_at: float = Field(description="Unix time")

    _result_for_kind = model_validator(mode="before")(result_for_kind)


class Problem(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    job_id: str | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
    model_pack: dict[str, Any] | None = Field(
        default=None, description="the active pack: name, family, dim, licence, commercial_use, threshold, location"
    )
