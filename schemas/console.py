"""Wire formats of the endpoints the web console needs beyond the recognition API: the key's own scope,
API keys, and the pipeline's streams and dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.api import CollectionName

ScopeName = Literal["read", "write", "admin"]


class Me(BaseModel):
    scope: ScopeName = Field(description="what this key may do: read < write < admin (admin also manages keys)")
    collections: list[str] | None = Field(
        default=None, description="the collections this key may see; null: every collection"
    )


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$", description="who or what uses the key")
    scope: ScopeName
    collections: list[CollectionName] | None = Field(
        default=None,
        max_length=1000,
        description="limit the key to these collections (by name); null: every collection",
    )


class ApiKey(BaseModel):
    id: int
    name: str
    scope: ScopeName
    prefix: str = Field(description="the key's first characters, to recognise it; the key itself is not kept")
    created_at: datetime
    revoked_at: datetime | None
    collections: list[str] | None = Field(default=None, description="the collections it may see; null: every one")


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the key itself: shown only in this answer, only its SHA-256 is stored")


class StageStats(BaseModel):
    stage: str
    stream: str
    group: str
    backlog: int = Field(
        description="entries waiting: undelivered plus pending (what backpressure compares with FECAPASS_MAX_BACKLOG)"
    )
    pending: int = Field(description="delivered to a consumer, not yet acknowledged")
    consumers: int
    lag: int | None = Field(description="entries not yet delivered to the group; null when Redis cannot tell")
    oldest_pending_seconds: float | None
    dead_letters: int


class Pipeline(BaseModel):
    stages: list[StageStats]
    model_pack: dict[str, Any] = Field(description="the active pack: name, family, dim, licence, threshold")
    threshold: float | None = Field(
        description="the similarity threshold a search without one uses: FECAPASS_SIMILARITY_THRESHOLD, else the"
        " active pack's calibrated threshold"
    )


class DeadLetter(BaseModel):
    stage: str
    message_id: str
    job_id: str | None
    error_code: str | None = Field(description="why the entry was dead-lettered")
    error: str | None
    fields: dict[str, str] = Field(description="every field of the entry, as redis-cli shows it")


class Replayed(BaseModel):
    stage: str
    message_id: str = Field(description="the new entry's id on the stage's stream")


class Purged(BaseModel):
    stage: str
    removed: int
