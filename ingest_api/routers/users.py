from __future__ import annotations

import psycopg
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from indexer.main_repository import DuplicateEmail
from ingest_api.deps import State
from ingest_api.problems import ApiError, unavailable
from schemas.api import Problem, User, UserCreate

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.post("", status_code=201, response_model=User, responses={409: {"model": Problem}})
async def create_user(body: UserCreate, state: State) -> User:
    try:
        row = await run_in_threadpool(state.main.create_user, str(body.email), body.full_name)
    except DuplicateEmail as exc:
        raise ApiError(409, "email_taken", f"a user with email {body.email} exists") from exc
    except psycopg.OperationalError as exc:
        raise unavailable("the main database") from exc
    return User(**row.__dict__)


@router.get("/{user_id}", response_model=User, responses={404: {"model": Problem}})
async def get_user(user_id: int, state: State) -> User:
    try:
        row = await run_in_threadpool(state.main.get_user, user_id)
    except psycopg.OperationalError as exc:
        raise unavailable("the main database") from exc
    if row is None:
        raise ApiError(404, "user_not_found", f"user {user_id} not found")
    return User(**row.__dict__)
