from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from ingest_api import jobs
from ingest_api.auth import READ, Caller
from ingest_api.collection_access import sees
from ingest_api.deps import State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from schemas.api import Job
from schemas.jobs import job_key
from schemas.text import decode_text

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[READ])


@router.get("/{job_id}", response_model=Job, name="get_job", responses=problems(404))
async def get_job(
    job_id: str,
    request: Request,
    state: State,
    caller: Caller,
    wait: Annotated[float, Query(ge=0, le=300, description="wait up to this long for the job to finish")] = 0,
) -> Job:
    """A job of a collection the key may see; any other is not found, as an unknown job is."""
    not_found = ApiError(404, "job_not_found", f"job {job_id} not found (unknown or expired)")
    if caller.collection_ids is not None:
        stored = await state.redis.hget(job_key(job_id), "collection_id")
        # No hash: the job is unknown (found so below); a hash without the field: a job from before collections.
        if not sees(caller, None if stored is None else int(decode_text(stored))):
            raise not_found
    job = await jobs.wait_for_job(state, request, job_id, wait)
    if job is None:
        raise not_found
    return job
