"""HTTP models of unknown faces: clusters to name or dismiss, "not this person", a collection's unknown-face policy."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from schemas.api import Email, FullName


class ClusterSample(BaseModel):
    crop_url: str = Field(description="presigned, expires after FECAPASS_PRESIGN_SECONDS")


class Cluster(BaseModel):
    id: int
    collection: str
    model_pack: str
    faces: int = Field(description="unknown faces in the cluster")
    samples: list[ClusterSample] = Field(description="crops of its best-detected faces")
    created_at: datetime


class ClusterPage(BaseModel):
    items: list[Cluster]
    next_after: int | None = Field(description="pass as `after` for the next page; null on the last page")


class ClusterName(BaseModel):
    """Join an existing person of the cluster's collection (``user_id``), or create one (``email``, ``full_name``)."""

    model_config = ConfigDict(extra="forbid")

    user_id: int | None = Field(default=None, ge=1)
    email: Email | None = None
    full_name: FullName = ""

    @model_validator(mode="after")
    def _one_person(self) -> ClusterName:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give either user_id (an existing person) or email (a new one), not both")
        return self


class NamedCluster(BaseModel):
    cluster_id: int
    user_id: int
    user_created: bool = Field(description="true when this call created the person")
    faces_added: int = Field(description="faces this call made enrolled faces of the person")
    faces_left_out: int = Field(description="faces marked 'not this person' for them, left unknown")


class DismissedCluster(BaseModel):
    cluster_id: int
    faces_erased: int = Field(description="faces this call erased (0 when repeated)")


class ReturnedFace(BaseModel):
    face_id: int = Field(description="the enrolled face, no longer one")
    user_id: int = Field(description="the person it is not; never suggested for it again")
    unknown_face_id: int
    cluster_id: int | None = Field(description="the cluster it joined at once, if any")


class UnknownFacesPolicy(BaseModel):
    collection: str
    keep_unknown_faces: bool
    unknown_retention_hours: int


class UnknownFacesPolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Only JSON true or false, as for users' is_active.
    keep_unknown_faces: StrictBool | None = None
    unknown_retention_hours: int | None = Field(default=None, ge=1, le=24 * 366 * 10)
