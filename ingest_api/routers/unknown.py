"""Unknown faces: clusters of faces that searches found but nobody was enrolled for, to name (they become a person's
enrolled faces) or dismiss (erased); "not this person" for an enrolled face; a collection's unknown-face policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from common.db.main_repository import ClusterTaken, CollectionRow, DuplicateEmail, NamingTarget, UnknownUser
from common.db.unknown_faces import UnknownFaces
from ingest_api import idempotency
from ingest_api.auth import ADMIN, READ, WRITE, Caller
from ingest_api.collection_access import collection_not_found
from ingest_api.deps import AppState, State
from ingest_api.idempotency import Idempotency
from ingest_api.openapi import problems
from ingest_api.problems import ApiError, user_not_found
from ingest_api.routers.faces import visible_face
from ingest_api.stores import call_store
from schemas.api import DEFAULT_COLLECTION, CollectionName
from schemas.gallery import FEED, FEED_LENGTH, Change, FeedEntry
from schemas.unknown import (
    Cluster,
    ClusterName,
    ClusterPage,
    ClusterSample,
    DismissedCluster,
    NamedCluster,
    ReturnedFace,
    UnknownFacesPolicy,
    UnknownFacesPolicyUpdate,
)

router = APIRouter(prefix="/v1", tags=["unknown faces"], dependencies=[READ])

SAMPLES = 4  # crops shown per cluster
CollectionQuery = Annotated[CollectionName, Query(description="the collection whose clusters are listed")]


def unknown_faces(state: AppState) -> UnknownFaces:
    def publish(change: Change, pack: str, face_ids: list[int], collection_id: int) -> None:
        entry = FeedEntry(change, pack, face_ids, collection_id)
        state.sync_redis.xadd(FEED, entry.to_fields(), maxlen=FEED_LENGTH, approximate=True)

    return UnknownFaces(state.main, state.vectors, state.store, publish)


def cluster_not_found(cluster_id: int) -> ApiError:
    return ApiError(404, "cluster_not_found", f"cluster {cluster_id} not found")


async def _visible_cluster(state: AppState, caller: Caller, cluster_id: int) -> None:
    """404 cluster_not_found for a cluster that does not exist or is in a collection the key may not see."""
    cluster = await call_store(state.main.get_cluster, cluster_id)
    if cluster is None or not caller.sees(cluster.collection_id):
        raise cluster_not_found(cluster_id)


@router.get("/clusters", response_model=ClusterPage, responses=problems(404))
async def list_clusters(
    state: State,
    caller: Caller,
    collection: CollectionQuery = DEFAULT_COLLECTION,
    after: Annotated[int, Query(ge=0, description="the last id of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ClusterPage:
    """Clusters of unknown faces waiting for a name, with a few presigned sample crops each."""
    found = await state.collections.visible(caller, collection)
    rows = await call_store(state.main.list_clusters, found.id, after, limit, SAMPLES)
    expires = timedelta(seconds=state.config.pipeline.presign_seconds)
    items = [
        Cluster(
            id=row.id,
            collection=found.name,
            model_pack=row.model_pack,
            faces=row.faces,
            samples=[
                ClusterSample(crop_url=state.presigner.presigned_url(key, expires)) for key in row.sample_crop_keys
            ],
            created_at=row.created_at,
        )
        for row in rows
    ]
    return ClusterPage(items=items, next_after=rows[-1].id if len(rows) == limit else None)


@router.post(
    "/clusters/{cluster_id}/name", response_model=NamedCluster, dependencies=[WRITE], responses=problems(404, 409)
)
async def name_cluster(
    cluster_id: int, body: ClusterName, state: State, caller: Caller, key: Idempotency
) -> NamedCluster:
    """The cluster's faces become enrolled faces of the person (an existing one, or one created now), found by the
    next search. Faces marked "not this person" for them stay unknown. Naming again as the same person is a no-op."""
    await _visible_cluster(state, caller, cluster_id)
    target = NamingTarget(user_id=body.user_id, email=body.email, full_name=body.full_name)

    async def name() -> NamedCluster:
        try:
            naming = await call_store(unknown_faces(state).name, cluster_id, target)
        except LookupError as exc:
            if isinstance(exc, UnknownUser):
                raise user_not_found(body.user_id or 0) from exc
            raise cluster_not_found(cluster_id) from exc
        except DuplicateEmail as exc:
            raise ApiError(409, "email_taken", f"a user with email {body.email} exists; name by user_id") from exc
        except ClusterTaken as exc:
            raise ApiError(409, "cluster_taken", str(exc)) from exc
        return NamedCluster(
            cluster_id=cluster_id,
            user_id=naming.user_id,
            user_created=naming.created,
            faces_added=len(naming.moves),
            faces_left_out=naming.left_out,
        )

    request = idempotency.fingerprint(f"POST /v1/clusters/{cluster_id}/name", body.model_dump(mode="json"))
    return await idempotency.once(
        state.redis, key, request, NamedCluster, name, state.config.api.idempotency_ttl_seconds
    )


@router.post(
    "/clusters/{cluster_id}/dismiss",
    response_model=DismissedCluster,
    dependencies=[WRITE],
    responses=problems(404, 409),
)
async def dismiss_cluster(cluster_id: int, state: State, caller: Caller) -> DismissedCluster:
    """Erase the cluster's faces (rows, embeddings, crops); a search delivered again keeps none of them."""
    await _visible_cluster(state, caller, cluster_id)
    try:
        erased = await call_store(unknown_faces(state).dismiss, cluster_id)
    except ClusterTaken as exc:
        raise ApiError(409, "cluster_taken", str(exc)) from exc
    except LookupError as exc:
        raise cluster_not_found(cluster_id) from exc
    return DismissedCluster(cluster_id=cluster_id, faces_erased=erased)


@router.post(
    "/faces/{face_id}/not-this-person", response_model=ReturnedFace, dependencies=[WRITE], responses=problems(404)
)
async def not_this_person(face_id: int, state: State, caller: Caller) -> ReturnedFace:
    """The enrolled face leaves its person (the next search no longer matches them with it) for the unknown faces of
    its collection, and is never made their face again (naming a cluster as them leaves it out)."""
    row = await call_store(state.main.get_face, face_id)
    if row is not None:
        await visible_face(state, caller, face_id)
    else:  # asked again: the face is in the unknown pool of its collection now
        moved = await call_store(state.main.unknown_face_from, face_id)
        if moved is None or not caller.sees(moved.collection_id):
            raise ApiError(404, "face_not_found", f"face {face_id} not found")
    returned = await call_store(unknown_faces(state).not_this_person, face_id)
    if returned is None:
        raise ApiError(404, "face_not_found", f"face {face_id} not found")
    unknown_row, user_id = returned
    placed = await call_store(state.main.get_unknown_face, unknown_row.id)
    return ReturnedFace(
        face_id=face_id,
        user_id=user_id,
        unknown_face_id=unknown_row.id,
        cluster_id=placed.cluster_id if placed is not None else None,
    )


def policy_view(row: CollectionRow) -> UnknownFacesPolicy:
    return UnknownFacesPolicy(
        collection=row.name,
        keep_unknown_faces=row.keep_unknown_faces,
        unknown_retention_hours=row.unknown_retention_hours,
    )


@router.get("/collections/{collection}/unknown-faces", response_model=UnknownFacesPolicy, responses=problems(404))
async def get_policy(collection: CollectionName, state: State, caller: Caller) -> UnknownFacesPolicy:
    found = await state.collections.visible(caller, collection)
    policy = await call_store(state.main.get_collection, found.id)  # fresh: the cached row may be 10 s old
    if policy is None:
        raise collection_not_found(collection)
    return policy_view(policy)


@router.patch(
    "/collections/{collection}/unknown-faces",
    response_model=UnknownFacesPolicy,
    dependencies=[ADMIN],
    responses=problems(404),
)
async def set_policy(
    collection: CollectionName, body: UnknownFacesPolicyUpdate, state: State, caller: Caller
) -> UnknownFacesPolicy:
    """Keep (or stop keeping) the faces of this collection's searches that match nobody, and for how long. A new
    retention applies to the faces kept already; turning keeping off keeps no new faces and leaves the kept ones to
    their retention (dismiss their clusters to erase them now)."""
    found = await state.collections.visible(caller, collection)
    policy = await call_store(
        state.main.set_unknown_faces_policy,
        found.id,
        keep=body.keep_unknown_faces,
        retention_hours=body.unknown_retention_hours,
    )
    if policy is None:
        raise collection_not_found(collection)
    return policy_view(policy)
