"""Unknown faces through the client against the real API: clusters listed (every page), named and dismissed,
"not this person", a collection's policy, counted in PostgreSQL and the bucket. The faces are kept as the index stage
keeps them (tests/api/test_unknown.py's helpers): no model is needed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from fecapass_client import (
    AsyncFecapass,
    Cluster,
    Conflict,
    DismissedCluster,
    Fecapass,
    Forbidden,
    NamedCluster,
    NotFound,
    ReturnedFace,
    UnknownFacesPolicy,
    ValidationFailed,
)

from common import clients
from common.db.unknown_faces import UnknownFaces, UnseenFace
from common.db.vector_repository import VectorRepository
from common.objects import crop_key
from common.settings import DatabaseSettings
from tests.api.conftest import new_email
from tests.api.test_corrections import served_face
from tests.api.test_unknown import DIM, PACK, a_cluster, unit
from tests.client.conftest import ClientInstallation, Recording


@pytest.fixture(scope="module")
def unknown(client_installation: ClientInstallation) -> Iterator[UnknownFaces]:
    env = client_installation.env
    settings = DatabaseSettings(main_db_dsn=env["FECAPASS_MAIN_DB_DSN"], vector_db_dsn=env["FECAPASS_VECTOR_DB_DSN"])
    with clients.vector_db_pool(settings) as pool:
        yield UnknownFaces(client_installation.main, VectorRepository(pool), client_installation.store)


def new_collection(installation: ClientInstallation) -> tuple[int, str]:
    row = installation.main.create_collection(f"client-{uuid.uuid4().hex[:10]}")
    return row.id, row.name


def people_apart(installation: ClientInstallation, unknown: UnknownFaces, collection_id: int, people: int) -> None:
    """Three kept faces of each of ``people`` people in the collection: as a_cluster keeps one person's, each person
    far from the others (random directions of a 32-dimensional space)."""
    rng = np.random.default_rng(collection_id)
    for _ in range(people):
        person = unit(rng.standard_normal(DIM))
        for _ in range(3):
            job_id = uuid.uuid4().hex
            installation.store.put(crop_key(job_id, 0), b"crop of " + job_id.encode())
            embedding = unit(person + 0.3 * unit(rng.standard_normal(DIM)))
            unknown.keep(
                collection_id, job_id, PACK, [UnseenFace(0, crop_key(job_id, 0), [1, 2, 3, 4], 0.9, embedding, 112)], 24
            )


def faces_of(installation: ClientInstallation, user_id: int) -> int:
    (row,) = installation.sql("SELECT count(*) FROM faces WHERE user_id = %s", user_id)
    return int(str(row[0]))


def unknown_in(installation: ClientInstallation, collection_id: int) -> int:
    return len(installation.main.collection_unknown_faces(collection_id))


def test_clusters_are_listed_page_by_page(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    people_apart(client_installation, unknown, collection_id, people=3)
    stored = client_installation.main.list_clusters(collection_id, 0, 100, 4)
    assert len(stored) == 3
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["read"], transport=transport) as api:
        clusters = api.list_clusters(collection=name, limit=2)
    assert all(isinstance(cluster, Cluster) for cluster in clusters)
    assert [(c.id, c.faces, c.collection) for c in clusters] == [(row.id, 3, name) for row in stored]
    assert all(len(cluster.samples) == 3 and cluster.model_pack == PACK for cluster in clusters)
    assert all("unknown/" in sample.crop_url for cluster in clusters for sample in cluster.samples)
    assert [request.url.params["after"] for request in transport.requests] == ["0", str(stored[1].id)]


def test_a_cluster_named_as_a_new_person_becomes_their_faces_once(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    cluster_id = a_cluster(client_installation.as_api_installation(), unknown, collection_id, faces=4)
    email = new_email("named")
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        named = api.name_cluster(cluster_id, email=email, full_name="Named Person")
        assert named == NamedCluster(cluster_id, named.user_id, user_created=True, faces_added=4, faces_left_out=0)
        person = api.get_user(named.user_id)
        assert (person.email, person.full_name, person.collection) == (email, "Named Person", name)
        assert faces_of(client_installation, named.user_id) == 4 and unknown_in(client_installation, collection_id) == 0
        again = api.name_cluster(cluster_id, email=email, full_name="Named Person")  # a repeat: the same end state
        assert (again.user_id, again.user_created, again.faces_added) == (named.user_id, False, 0)
        assert faces_of(client_installation, named.user_id) == 4
        assert api.list_clusters(collection=name) == []

        with pytest.raises(Conflict) as taken:
            api.name_cluster(cluster_id, email=new_email("other"))
        assert taken.value.code == "cluster_taken"
        with pytest.raises(Conflict) as not_dismissed:
            api.dismiss_cluster(cluster_id)
        assert not_dismissed.value.code == "cluster_taken"
        assert faces_of(client_installation, named.user_id) == 4


def test_a_cluster_named_as_an_existing_person_joins_them(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    cluster_id = a_cluster(client_installation.as_api_installation(), unknown, collection_id, faces=3)
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        person = api.create_user(new_email("known"), "Known", collection=name)
        elsewhere = api.create_user(new_email("elsewhere"), "Default collection")
        with pytest.raises(NotFound) as other_collection:
            api.name_cluster(cluster_id, user_id=elsewhere.id)
        assert other_collection.value.code == "user_not_found"
        with pytest.raises(Conflict) as email_taken:
            api.name_cluster(cluster_id, email=person.email)
        assert email_taken.value.code == "email_taken"
        assert faces_of(client_installation, person.id) == 0
        joined = api.name_cluster(cluster_id, user_id=person.id, idempotency_key=uuid.uuid4().hex)
    assert (joined.user_id, joined.user_created, joined.faces_added) == (person.id, False, 3)
    assert faces_of(client_installation, person.id) == 3 and faces_of(client_installation, elsewhere.id) == 0


def test_a_dismissed_cluster_is_erased(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    cluster_id = a_cluster(client_installation.as_api_installation(), unknown, collection_id, faces=3)
    crops = [row.crop_key for row in client_installation.main.collection_unknown_faces(collection_id)]
    assert len(crops) == 3 and all(client_installation.store.keys(key) for key in crops)
    with Fecapass(base_url, client_installation.keys["read"]) as reader, pytest.raises(Forbidden):
        reader.dismiss_cluster(cluster_id)
    assert unknown_in(client_installation, collection_id) == 3
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        dismissed = api.dismiss_cluster(cluster_id)
        assert dismissed == DismissedCluster(cluster_id=cluster_id, faces_erased=3)
        assert unknown_in(client_installation, collection_id) == 0
        assert not any(client_installation.store.keys(key) for key in crops)
        assert api.dismiss_cluster(cluster_id).faces_erased == 0  # a repeat erases nothing more
        assert api.list_clusters(collection=name) == []
        for call in (lambda: api.dismiss_cluster(2**62), lambda: api.name_cluster(2**62, email=new_email("x"))):
            with pytest.raises(NotFound) as missing:
                call()
            assert missing.value.code == "cluster_not_found"


def test_a_key_limited_to_another_collection_cannot_touch_its_clusters(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    cluster_id = a_cluster(client_installation.as_api_installation(), unknown, collection_id, faces=3)
    other_id, _ = new_collection(client_installation)
    with Fecapass(base_url, client_installation.new_key("admin", [other_id])) as limited:
        for call in (
            lambda: limited.list_clusters(collection=name),
            lambda: limited.set_unknown_faces_policy(name, keep=True),
        ):
            with pytest.raises(NotFound) as hidden:
                call()
            assert hidden.value.code == "collection_not_found"
        for cluster_call in (
            lambda: limited.dismiss_cluster(cluster_id),
            lambda: limited.name_cluster(cluster_id, email=new_email("x")),
        ):
            with pytest.raises(NotFound) as hidden_cluster:
                cluster_call()
            assert hidden_cluster.value.code == "cluster_not_found"
    assert unknown_in(client_installation, collection_id) == 3
    policy = client_installation.main.get_collection(collection_id)
    assert policy is not None and not policy.keep_unknown_faces


def test_naming_takes_exactly_one_person_before_any_request(
    base_url: str, client_installation: ClientInstallation
) -> None:
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["write"], transport=transport) as api:
        for wrong in ({}, {"user_id": 1, "email": new_email("both")}, {"user_id": 1, "full_name": "A new name?"}):
            with pytest.raises(ValueError):
                api.name_cluster(1, **wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            api.name_cluster(True, email=new_email("bool"))
    assert transport.requests == []


def test_not_this_person_sends_an_enrolled_face_back_to_the_unknown_ones(
    base_url: str, client_installation: ClientInstallation
) -> None:
    collection_id, name = new_collection(client_installation)
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        owner = api.create_user(new_email("owner"), "Owner", collection=name)
        face_id = served_face(client_installation.as_api_installation(), owner.id, collection_id)
        returned = api.not_this_person(face_id)
        assert isinstance(returned, ReturnedFace) and (returned.face_id, returned.user_id) == (face_id, owner.id)
        assert faces_of(client_installation, owner.id) == 0 and unknown_in(client_installation, collection_id) == 1
        assert api.not_this_person(face_id) == returned  # a repeat: the same answer, nothing more moved
        assert unknown_in(client_installation, collection_id) == 1
        with pytest.raises(NotFound) as gone:
            api.get_face(face_id)
        assert gone.value.code == "face_not_found"
        with pytest.raises(NotFound) as missing:
            api.not_this_person(2**62)
        assert missing.value.code == "face_not_found"


def test_a_collections_policy_is_read_by_any_key_and_changed_by_admin_keys(
    base_url: str, client_installation: ClientInstallation
) -> None:
    collection_id, name = new_collection(client_installation)
    with Fecapass(base_url, client_installation.keys["read"]) as reader:
        assert reader.unknown_faces_policy(name) == UnknownFacesPolicy(name, False, 720)
    with Fecapass(base_url, client_installation.keys["write"]) as writer, pytest.raises(Forbidden):
        writer.set_unknown_faces_policy(name, keep=True)
    with Fecapass(base_url, client_installation.keys["admin"]) as admin:
        changed = admin.set_unknown_faces_policy(name, keep=True, retention_hours=48)
        assert changed == UnknownFacesPolicy(name, True, 48)
        stored = client_installation.main.get_collection(collection_id)
        assert stored is not None and (stored.keep_unknown_faces, stored.unknown_retention_hours) == (True, 48)
        assert admin.set_unknown_faces_policy(name, retention_hours=12) == UnknownFacesPolicy(name, True, 12)
        assert admin.get_collection(name).unknown_retention_hours == 12
        with pytest.raises(ValidationFailed) as refused:
            admin.set_unknown_faces_policy(name, retention_hours=0)
        assert refused.value.code == "invalid_request"
        with pytest.raises(ValueError):
            admin.set_unknown_faces_policy(name)
        with pytest.raises(TypeError):
            admin.set_unknown_faces_policy(name, keep="yes")  # type: ignore[arg-type]
    stored = client_installation.main.get_collection(collection_id)
    assert stored is not None and (stored.keep_unknown_faces, stored.unknown_retention_hours) == (True, 12)


def test_the_async_client_lists_names_and_dismisses_alike(
    base_url: str, client_installation: ClientInstallation, unknown: UnknownFaces
) -> None:
    collection_id, name = new_collection(client_installation)
    people_apart(client_installation, unknown, collection_id, people=2)

    async def scenario() -> tuple[list[Cluster], NamedCluster, DismissedCluster, UnknownFacesPolicy]:
        async with AsyncFecapass(base_url, client_installation.keys["admin"]) as api:
            clusters = await api.list_clusters(collection=name, limit=1)
            named = await api.name_cluster(clusters[0].id, email=new_email("async"))
            dismissed = await api.dismiss_cluster(clusters[1].id)
            policy = await api.set_unknown_faces_policy(name, keep=True)
            return clusters, named, dismissed, policy

    clusters, named, dismissed, policy = asyncio.run(scenario())
    assert len(clusters) == 2 and named.faces_added == 3 and dismissed.faces_erased == 3 and policy.keep_unknown_faces
    assert faces_of(client_installation, named.user_id) == 3 and unknown_in(client_installation, collection_id) == 0
