"""Python client for the Fecapass face-recognition API: ``Fecapass`` (sync) and ``AsyncFecapass`` (asyncio).

Depends on httpx only; it imports nothing of the server."""

from __future__ import annotations

from fecapass_client._exchange import RetryPolicy
from fecapass_client._session import VERSION as __version__
from fecapass_client.aio import AsyncFecapass
from fecapass_client.client import Fecapass
from fecapass_client.errors import (
    Conflict,
    ConnectionFailed,
    FecapassError,
    Forbidden,
    InvalidResponse,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMedia,
    ValidationFailed,
)
from fecapass_client.models import (
    DetectedFace,
    DetectResult,
    EnrollResult,
    Face,
    FoundFace,
    Health,
    Job,
    JobError,
    JobResult,
    Match,
    Me,
    Quality,
    ReindexResult,
    SearchFace,
    SearchResult,
    User,
    VerifiedFace,
    VerifyResult,
)

__all__ = [
    "AsyncFecapass",
    "Conflict",
    "ConnectionFailed",
    "DetectResult",
    "DetectedFace",
    "EnrollResult",
    "Face",
    "Fecapass",
    "FecapassError",
    "Forbidden",
    "FoundFace",
    "Health",
    "InvalidResponse",
    "Job",
    "JobError",
    "JobResult",
    "JobTimeout",
    "Match",
    "Me",
    "NotFound",
    "PayloadTooLarge",
    "Quality",
    "RateLimited",
    "ReindexResult",
    "RetryPolicy",
    "SearchFace",
    "SearchResult",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMedia",
    "User",
    "ValidationFailed",
    "VerifiedFace",
    "VerifyResult",
    "__version__",
]
