"""Enroll, search, verify and detect. Each answers 202 with a job; ``wait`` returns the finished job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import AnyHttpUrl
from starlette.concurrency import run_in_threadpool

from common import egress
from common.db.main_repository import UserRow
from common.imaging import ImageInfo
from ingest_api import jobs
from ingest_api.auth import READ, WRITE, Caller
from ingest_api.deps import AppState, State
from ingest_api.idempotency import Idempotency
from ingest_api.openapi import problems
from ingest_api.problems import ApiError, user_not_found
from ingest_api.stores import call_store
from ingest_api.uploads import Upload, photo_upload, read_photo
from schemas.api import DEFAULT_COLLECTION, CollectionName, ExternalId, Job
from schemas.streams import JobKind

router = APIRouter(prefix="/v1", tags=["recognition"], dependencies=[READ])

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=300,
        description="seconds to wait for the result (capped by FECAPASS_MAX_WAIT_SECONDS); 0 = answer at once",
    ),
]
Threshold = Annotated[
    float | None,
    Query(
        ge=-1,
        le=1,
        description="minimum cosine similarity; default FECAPASS_SIMILARITY_THRESHOLD, else the pack's calibrated"
        " threshold (see CALIBRATION.md; each pack uses the cosine scale differently)",
    ),
]
Photo = Annotated[Upload, Depends(photo_upload)]  # multipart `file`, or the body as image/jpeg, png or webp
InCollection = Annotated[
    CollectionName, Query(description="the collection (gallery) the request works in; unknown: 404")
]
CallbackQuery = Annotated[
    AnyHttpUrl | None,
    Query(description="POST the finished job here, signed with X-Fecapass-Signature (see README)"),
]


def _check_callback_url(url: str) -> None:
    try:
        egress.policy_from_env().check_url(url)
    except egress.EgressRefused as exc:
        raise ApiError(422, "callback_url_refused", f"callback_url refused: {exc}") from None
    except OSError:
        pass  # does not resolve (yet): the sender checks again when it connects


async def checked_callback_url(callback_url: CallbackQuery = None) -> AnyHttpUrl | None:
    """Refuse a destination the webhook sender would refuse (common/egress.py). Resolving the host may block, so
    the check runs on a worker thread; an upload without a callback makes no thread hop (its cost is an upload's)."""
    if callback_url is not None:
        await run_in_threadpool(_check_callback_url, str(callback_url))
    return callback_url


CallbackUrl = Annotated[AnyHttpUrl | None, Depends(checked_callback_url)]


def callback(url: AnyHttpUrl | None) -> dict[str, Any]:
    return {"callback_url": str(url)} if url is not None else {}


JOB_RESPONSES: dict[int | str, dict[str, object]] = {200: {"model": Job}, **problems(404, 409, 413, 415, 422)}


def face_external_id_taken(external_id: str) -> ApiError:
    return ApiError(409, "face_external_id_taken", f"a face of this collection has external id {external_id}")


async def photo_of(state: AppState, upload: Upload) -> tuple[bytes, ImageInfo]:
    cfg = state.config.pipeline
    return await read_photo(upload, cfg.max_upload_bytes, cfg.max_image_pixels, state.decodes)


async def require_active_user(
    state: AppState, caller: Caller, user_id: int, collection_id: int | None = None
) -> UserRow:
    return active_user(await call_store(state.main.get_user, user_id), caller, user_id, collection_id)


def active_user(user: UserRow | None, caller: Caller, user_id: int, collection_id: int | None = None) -> UserRow:
    """The active user, if the key may see them (and, given ``collection_id``, in that collection); else 404."""
    if user is None or not user.is_active or not caller.sees(user.collection_id):
        raise user_not_found(user_id)
    if collection_id is not None and user.collection_id != collection_id:
        raise user_not_found(user_id)
    return user


@router.post(
    "/users/{user_id}/faces", status_code=202, response_model=Job, dependencies=[WRITE], responses=JOB_RESPONSES
)
async def enroll_face(
    user_id: int,
    file: Photo,
    request: Request,
    state: State,
    caller: Caller,
    idempotency: Idempotency,
    external_id: Annotated[
        ExternalId | None, Query(description="the client's id for this face, unique in the user's collection")
    ] = None,
    wait: WaitSeconds = 0,
    callback_url: CallbackUrl = None,
) -> JSONResponse:
    """Enroll the largest face of the photo for the user, in the user's collection."""
    # The user and their face's external id in one query: each query is a hop to the thread pool and a round trip.
    found, taken = await call_store(state.main.enroll_target, user_id, external_id)
    user = active_user(found, caller, user_id)
    if taken:
        raise face_external_id_taken(str(external_id))
    photo = await photo_of(state, file)
    extra = {"user_id": user_id, "collection_id": user.collection_id, "external_id": external_id}
    return await jobs.submit_and_respond(
        state,
        request,
        wait,
        kind=JobKind.ENROLL,
        photos=[photo],
        extra={**extra, **callback(callback_url)},
        idempotency=idempotency,
    )


@router.post("/search", status_code=202, response_model=Job, responses=JOB_RESPONSES)
async def search_faces(
    file: Photo,
    request: Request,
    state: State,
    caller: Caller,
    idempotency: Idempotency,
    collection: InCollection = DEFAULT_COLLECTION,
    threshold: Threshold = None,
    limit: Annotated[
        int | None, Query(ge=1, le=100, description="most people returned per face; default FECAPASS_SEARCH_LIMIT")
    ] = None,
    wait: WaitSeconds = 0,
    callback_url: CallbackUrl = None,
) -> JSONResponse:
    """Who is in this photo? Every face found gets its own list of matches, from the collection's people."""
    cfg = state.config.pipeline
    gallery = await state.collections.visible(caller, collection)
    photo = await photo_of(state, file)
    extra = {
        "collection_id": gallery.id,
        "threshold": threshold,
        "limit": cfg.search_limit if limit is None else limit,
        **callback(callback_url),
    }
    return await jobs.submit_and_respond(
        state, request, wait, kind=JobKind.SEARCH, photos=[photo], extra=extra, idempotency=idempotency
    )


@router.post("/verify", status_code=202, response_model=Job, responses=JOB_RESPONSES)
async def verify_face(
    file: Photo,
    request: Request,
    state: State,
    caller: Caller,
    idempotency: Idempotency,
    second_file: Annotated[UploadFile | None, File(description="a second photo to compare with")] = None,
    user_id: Annotated[
        int | None, Query(description="compare with this user's enrolled faces (a user of the collection)")
    ] = None,
    collection: InCollection = DEFAULT_COLLECTION,
    threshold: Threshold = None,
    wait: WaitSeconds = 0,
    callback_url: CallbackUrl = None,
) -> JSONResponse:
    """1:1: is the largest face of `file` the user `user_id` (their best face), or the person of `second_file`?"""
    if (user_id is None) == (second_file is None):
        raise ApiError(422, "invalid_request", "give exactly one of user_id or second_file")
    gallery = await state.collections.visible(caller, collection)
    if user_id is not None:
        await require_active_user(state, caller, user_id, gallery.id)
    photos = [await photo_of(state, file)]
    if second_file is not None:
        photos.append(await photo_of(state, second_file))
    extra = {
        "collection_id": gallery.id,
        "threshold": threshold,
        "user_id": user_id,
        **callback(callback_url),
    }
    return await jobs.submit_and_respond(
        state, request, wait, kind=JobKind.VERIFY, photos=photos, extra=extra, idempotency=idempotency
    )


@router.post("/detect", status_code=202, response_model=Job, responses=JOB_RESPONSES)
async def detect_faces(
    file: Photo,
    request: Request,
    state: State,
    caller: Caller,
    idempotency: Idempotency,
    collection: InCollection = DEFAULT_COLLECTION,
    wait: WaitSeconds = 0,
    callback_url: CallbackUrl = None,
) -> JSONResponse:
    """Faces only: box, 5 keypoints, score and quality (size in pixels, sharpness) of every face.

    Keypoints and score are the active pack's: InsightFace packs give eye centres, nose tip and mouth corners
    with a 0..1 score; dlib gives the outer and inner corners of each eye and the base of the nose with its
    detector's margin (above 0)."""
    # No gallery is read; the job belongs to the collection, so that only keys of that collection read it.
    gallery = await state.collections.visible(caller, collection)
    photo = await photo_of(state, file)
    extra = {"collection_id": gallery.id, **callback(callback_url)}
    return await jobs.submit_and_respond(
        state, request, wait, kind=JobKind.DETECT, photos=[photo], extra=extra, idempotency=idempotency
    )
