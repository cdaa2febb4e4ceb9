from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from ingest_api import jobs
from ingest_api.auth import READ
from ingest_api.deps import State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from schemas.api import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[READ])


@router.get("/{job_id}", response_model=Job, name="get_job", responses=problems(404))
async def get_job(
    job_id: str,
    request: Request,
    state: State,
    wait: Annotated[float, Query(ge=0, le=300, description="wait up to this long for the job to finish")] = 0,
) -> Job:
    job = await jobs.wait_for_job(state, request, job_id, wait)
    if job is None:
        raise ApiError(404, "job_not_found", f"job {job_id} not found (unknown or expired)")
    return job
