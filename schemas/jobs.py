"""The job status hash: one Redis hash per job, read by the API, written by the stages."""

from __future__ import annotations

from enum import StrEnum

from schemas.streams import Stage

JOB_KEY_PREFIX = "fecapass:job:"
# A set per user of the ids of their jobs (enroll, verify against them), so that erasing the user finds the jobs
# still in flight.
USER_JOBS_KEY_PREFIX = "fecapass:user-jobs:"
# Finishers publish the job id here; the API wakes waiting requests from one subscription.
JOB_DONE_CHANNEL = "fecapass:jobs:finished"


class JobState(StrEnum):
    QUEUED = "queued"
    DETECTING = "detecting"
    ALIGNING = "aligning"
    EMBEDDING = "embedding"
    INDEXING = "indexing"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


STAGE_STATE = {
    Stage.DETECT: JobState.DETECTING,
    Stage.ALIGN: JobState.ALIGNING,
    Stage.EMBED: JobState.EMBEDDING,
    Stage.INDEX: JobState.INDEXING,
}


class ErrorCode(StrEnum):
    """Stable machine-readable reasons a job failed."""

    NO_FACE = "no_face"
    UNDECODABLE_IMAGE = "undecodable_image"
    IMAGE_TOO_LARGE = "image_too_large"
    OBJECT_MISSING = "object_missing"
    OBJECT_UNREADABLE = "object_unreadable"
    USER_NOT_FOUND = "user_not_found"
    FACE_ERASED = "face_erased"  # an enroll entry delivered again after its face was erased: nothing is stored
    USER_HAS_NO_FACES = "user_has_no_faces"
    FACE_EXTERNAL_ID_TAKEN = "face_external_id_taken"  # another face of the collection has the enroll's external id
    MALFORMED_MESSAGE = "malformed_message"
    PACK_UNAVAILABLE = "pack_unavailable"
    TOO_MANY_DELIVERIES = "too_many_deliveries"
    CALLBACK_URL_REFUSED = "callback_url_refused"  # a webhook whose destination the egress policy refuses
    INTERNAL = "internal_error"


def job_key(job_id: str) -> str:
    return f"{JOB_KEY_PREFIX}{job_id}"


def user_jobs_key(user_id: int) -> str:
    return f"{USER_JOBS_KEY_PREFIX}{user_id}"
