"""Typed results: frozen dataclasses read from the API's JSON, field for field as the API's OpenAPI document names
them (tests/client/test_drift.py compares the two). A field the API requires has no default here; one it may leave
out defaults to None. Fields a newer server adds are ignored, so that an upgrade of the server does not break the
client."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, Union

from fecapass_client.errors import InvalidResponse

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the photo

# Job states (the API's JobState); a finished job is done or failed and never changes again.
DONE, FAILED = "done", "failed"
FINISHED_STATES = frozenset({DONE, FAILED})


@dataclass(frozen=True)
class User:
    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    collection: str  # the collection's name
    external_id: str | None  # None: the person has none


@dataclass(frozen=True)
class UserPage:
    items: tuple[User, ...]
    next_after: int | None


@dataclass(frozen=True)
class Face:
    id: int
    user_id: int
    box: Box
    det_score: float
    faces_seen: int
    model_pack: str
    created_at: datetime
    photo_url: str  # presigned: it expires (FECAPASS_PRESIGN_SECONDS)
    crop_url: str
    collection: str
    external_id: str | None


@dataclass(frozen=True)
class FoundFace:
    box: Box
    score: float


@dataclass(frozen=True)
class Quality:
    size: float
    sharpness: float


@dataclass(frozen=True)
class DetectedFace:
    box: Box
    score: float
    keypoints: tuple[tuple[float, float], ...]
    quality: Quality


@dataclass(frozen=True)
class VerifiedFace:
    box: Box
    score: float
    photo: int  # 0: the photo, 1: the second photo


@dataclass(frozen=True)
class Match:
    user_id: int
    face_id: int
    similarity: float
    photo_url: str
    external_id: str | None = None  # the user's; left out of the JSON when they have none


@dataclass(frozen=True)
class SearchFace:
    box: Box
    score: float
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class EnrollResult:
    user_id: int
    face_id: int
    faces_seen: int
    face: FoundFace
    model_pack: str


@dataclass(frozen=True)
class SearchResult:
    threshold: float
    model_pack: str
    faces_seen: int
    faces: tuple[SearchFace, ...]
    threshold_source: str | None = None
    gallery_size: int | None = None


@dataclass(frozen=True)
class VerifyResult:
    threshold: float
    model_pack: str
    similarity: float
    match: bool
    faces: tuple[VerifiedFace, ...]
    user_id: int | None = None
    face_id: int | None = None
    faces_compared: int | None = None


@dataclass(frozen=True)
class DetectResult:
    faces_seen: int
    faces: tuple[DetectedFace, ...]


@dataclass(frozen=True)
class ReindexResult:
    face_id: int
    model_pack: str
    skipped: str | None = None


JobResult = Union[EnrollResult, SearchResult, VerifyResult, DetectResult, ReindexResult]  # noqa: UP007
RESULT_TYPES: dict[str, type[JobResult]] = {
    "enroll": EnrollResult,
    "search": SearchResult,
    "verify": VerifyResult,
    "detect": DetectResult,
    "reindex": ReindexResult,
}


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A job as ``GET /v1/jobs/{id}`` returns it. ``result`` is its kind's typed result once done (a plain dict
    for a kind this client does not know), ``error`` is set once failed; ``raw`` is the JSON as received."""

    job_id: str
    kind: str
    state: str
    status_url: str
    image_key: str
    user_id: int | None = None
    model_pack: str | None = None
    created_at: float | None = None  # Unix time
    finished_at: float | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    faces_seen: int | None = None
    query_time_ms: float | None = None
    error: JobError | None = None
    result: JobResult | dict[str, Any] | None = None  # read by parse_job, as its kind says
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"client_only": True})

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED


@dataclass(frozen=True)
class Me:
    scope: str  # read, write or admin
    collections: tuple[str, ...] | None = None  # the collections the key may see; None: every collection


@dataclass(frozen=True)
class Collection:
    name: str
    keep_unknown_faces: bool  # whether faces of its searches that matched nobody are kept (unknown faces)
    unknown_retention_hours: int
    created_at: datetime


@dataclass(frozen=True)
class ClusterSample:
    crop_url: str  # presigned: it expires (FECAPASS_PRESIGN_SECONDS)


@dataclass(frozen=True)
class Cluster:
    """Unknown faces of one person nobody has named yet."""

    id: int
    collection: str
    model_pack: str
    faces: int
    samples: tuple[ClusterSample, ...]  # crops of its best-detected faces
    created_at: datetime


@dataclass(frozen=True)
class ClusterPage:
    items: tuple[Cluster, ...]
    next_after: int | None


@dataclass(frozen=True)
class NamedCluster:
    cluster_id: int
    user_id: int
    user_created: bool  # this call created the person
    faces_added: int  # faces this call made enrolled faces of the person (0 when repeated)
    faces_left_out: int  # faces marked "not this person" for them, left unknown


@dataclass(frozen=True)
class DismissedCluster:
    cluster_id: int
    faces_erased: int  # 0 when repeated


@dataclass(frozen=True)
class ReturnedFace:
    """An enrolled face sent back to the unknown faces ("not this person")."""

    face_id: int  # the enrolled face's id, no longer one
    user_id: int  # the person it is not: never suggested for them again
    unknown_face_id: int
    cluster_id: int | None  # the cluster it joined at once, if any


@dataclass(frozen=True)
class UnknownFacesPolicy:
    collection: str
    keep_unknown_faces: bool
    unknown_retention_hours: int


@dataclass(frozen=True)
class Health:
    status: str  # "ok", or "unavailable" with the failing checks
    checks: dict[str, str] = field(default_factory=dict)
    model_pack: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


T = TypeVar("T")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if cls not in _HINTS:  # resolving the annotations' strings once per class
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def parse(cls: type[T], data: Any, **given: Any) -> T:
    """``cls`` from its JSON object; ``given`` are fields already converted (they replace the JSON's)."""
    if not isinstance(data, dict):
        raise InvalidResponse(f"expected a {cls.__name__} object, got {type(data).__name__}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name in given:
            values[spec.name] = given[spec.name]
        elif spec.name in data:
            values[spec.name] = _convert(hints[spec.name], data[spec.name], f"{cls.__name__}.{spec.name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise InvalidResponse(f"{cls.__name__} without its field {spec.name!r}")
    return cls(**values)


def parse_job(data: Any) -> Job:
    """A job, its result read as its kind's model."""
    if not isinstance(data, dict):
        raise InvalidResponse(f"expected a job object, got {type(data).__name__}")
    result = data.get("result")
    if result is not None and not isinstance(result, dict):
        raise InvalidResponse(f"Job.result: expected an object, got {type(result).__name__}")
    kind = RESULT_TYPES.get(str(data.get("kind")))
    if result is not None and kind is not None:
        result = parse(kind, result)
    return parse(Job, data, result=result, raw=data)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        if len(choices) == 1:
            return _convert(choices[0], value, where)
        return value  # only Job.result is a union of several types, and parse_job reads it itself
    if hint is Any:
        return value
    if value is None:
        raise InvalidResponse(f"{where} is null")
    if dataclasses.is_dataclass(hint):
        return parse(typing.cast(type[Any], hint), value)
    if origin is tuple:
        if not isinstance(value, list):
            raise InvalidResponse(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{where}[]") for item in value)
        if len(args) != len(value):
            raise InvalidResponse(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(arg, item, f"{where}[]") for arg, item in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidResponse(f"{where}: expected an object")
        return {key: _convert(args[1], item, f"{where}.{key}") for key, item in value.items()}
    return _scalar(hint, value, where)


# Python 3.10's fromisoformat reads neither the "Z" the API writes for UTC nor fractions of other than 3 or 6 digits.
_ISO = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)?$")


def _datetime(value: str, where: str) -> datetime:
    found = _ISO.match(value)
    if found is None:
        raise InvalidResponse(f"{where}: not an ISO 8601 time: {value!r}")
    fraction = (found["fraction"] or "").ljust(6, "0")[:6]
    zone = found["zone"] or "Z"  # the API's times are UTC
    return datetime.fromisoformat(f"{found['time']}.{fraction}{'+00:00' if zone == 'Z' else zone}")


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is datetime and isinstance(value, str):
        return _datetime(value, where)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise InvalidResponse(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
