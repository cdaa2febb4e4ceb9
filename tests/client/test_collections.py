"""Collections and external ids through the client against the real API: created, listed, read and erased (counted
in PostgreSQL), a key limited to collections seeing nothing of the others, and the errors by code."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fecapass_client import AsyncFecapass, Collection, Conflict, Fecapass, Forbidden, NotFound

from tests.api.conftest import new_email, photo
from tests.client.conftest import ClientInstallation, Recording


def new_name() -> str:
    return f"site-{uuid.uuid4().hex[:8]}"


def collections_named(installation: ClientInstallation, name: str) -> int:
    (row,) = installation.sql("SELECT count(*) FROM collections WHERE name = %s", name)
    return int(str(row[0]))


def test_external_ids_are_stored_and_found(base_url: str, client_installation: ClientInstallation) -> None:
    external_id = f"staff-{uuid.uuid4().hex[:8]}"
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        user = api.create_user(new_email("ext"), "External", collection="default", external_id=external_id)
        assert (user.collection, user.external_id) == ("default", external_id)
        assert api.get_user(user.id) == user
        assert api.list_users(external_id=external_id) == [user]
        assert api.list_users(collection="default", external_id=external_id) == [user]
        assert api.list_users(external_id=f"{external_id}-other") == []
        plain = api.create_user(new_email("plain"), "No external id")
        assert plain.external_id is None and plain.collection == "default"


def test_an_unknown_collection_is_not_found(base_url: str, client_installation: ClientInstallation) -> None:
    missing = new_name()
    queued = client_installation.queued()
    with Fecapass(base_url, client_installation.keys["admin"]) as api:
        for call in (
            lambda: api.list_users(collection=missing),
            lambda: api.create_user(new_email("lost"), collection=missing),
            lambda: api.search(photo(seed=81), collection=missing),
            lambda: api.get_collection(missing),
            lambda: api.delete_collection(missing),
            lambda: api.list_clusters(collection=missing),
            lambda: api.unknown_faces_policy(missing),
        ):
            with pytest.raises(NotFound) as not_found:
                call()
            assert not_found.value.code == "collection_not_found"
    assert client_installation.queued() == queued


def test_collections_are_created_listed_and_erased_with_what_they_hold(
    base_url: str, client_installation: ClientInstallation
) -> None:
    name = new_name()
    with Fecapass(base_url, client_installation.keys["admin"]) as api:
        created = api.create_collection(name)
        assert isinstance(created, Collection) and created.name == name
        assert (created.keep_unknown_faces, created.unknown_retention_hours) == (False, 720)
        assert collections_named(client_installation, name) == 1
        assert api.get_collection(name) == created
        listed = api.list_collections()
        assert created in listed and "default" in {collection.name for collection in listed}
        with pytest.raises(Conflict) as exists:
            api.create_collection(name)
        assert exists.value.code == "collection_exists" and collections_named(client_installation, name) == 1

        person = api.create_user(new_email("inside"), "Inside", collection=name)
        assert person.collection == name and api.list_users(collection=name) == [person]
        api.delete_collection(name)
        assert collections_named(client_installation, name) == 0
        assert client_installation.users_with_email(person.email) == 0
        assert name not in {collection.name for collection in api.list_collections()}
        with pytest.raises(NotFound) as gone:  # a later call, not a retry: nothing says it was this one's
            api.delete_collection(name)
        assert gone.value.code == "collection_not_found"


def test_only_an_admin_key_of_every_collection_creates_one(
    base_url: str, client_installation: ClientInstallation
) -> None:
    name = new_name()
    limited_admin = client_installation.new_key("admin", [1])
    for key in (client_installation.keys["write"], limited_admin):
        with Fecapass(base_url, key) as api, pytest.raises(Forbidden) as refused:
            api.create_collection(name)
        assert refused.value.code == "insufficient_scope"
    assert collections_named(client_installation, name) == 0


def test_a_key_limited_to_a_collection_sees_nothing_of_another(
    base_url: str, client_installation: ClientInstallation
) -> None:
    mine, theirs = new_name(), new_name()
    intruder = new_email("intruder")
    with Fecapass(base_url, client_installation.keys["admin"]) as admin:
        admin.create_collection(mine)
        admin.create_collection(theirs)
        stranger = admin.create_user(new_email("theirs"), "Theirs", collection=theirs)
    row = client_installation.main.collection_named(mine)
    assert row is not None
    with Fecapass(base_url, client_installation.new_key("write", [row.id])) as api:
        me = api.me()
        assert (me.scope, me.collections) == ("write", (mine,))
        assert [collection.name for collection in api.list_collections()] == [mine]
        assert api.get_collection(mine).name == mine
        own = api.create_user(new_email("mine"), "Mine", collection=mine)
        assert api.list_users(collection=mine) == [own]
        for call in (
            lambda: api.get_collection(theirs),
            lambda: api.get_collection("default"),
            lambda: api.list_users(collection=theirs),
            lambda: api.list_users(),  # the default collection is another one too
            lambda: api.create_user(intruder, collection=theirs),
            lambda: api.list_clusters(collection=theirs),
            lambda: api.unknown_faces_policy(theirs),
        ):
            with pytest.raises(NotFound) as hidden:
                call()
            assert hidden.value.code == "collection_not_found"
        with pytest.raises(NotFound) as person_hidden:
            api.get_user(stranger.id)
        assert person_hidden.value.code == "user_not_found"  # as for a person who does not exist
    assert client_installation.users_with_email(stranger.email) == 1
    assert client_installation.users_with_email(intruder) == 0


def test_a_name_the_api_could_not_have_made_is_refused_before_any_request(
    base_url: str, client_installation: ClientInstallation
) -> None:
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["admin"], transport=transport) as api:
        for name in ("../users", "..", "default/unknown-faces", "Site", "", "a" * 64, "site a", "site%2F"):
            for call in (api.get_collection, api.delete_collection, api.create_collection, api.unknown_faces_policy):
                with pytest.raises(ValueError, match="not a collection name"):
                    call(name)
    assert transport.requests == []


def test_the_async_client_manages_collections_alike(base_url: str, client_installation: ClientInstallation) -> None:
    name = new_name()

    async def scenario() -> tuple[Collection, list[Collection], Collection]:
        async with AsyncFecapass(base_url, client_installation.keys["admin"]) as api:
            created = await api.create_collection(name)
            listed = await api.list_collections()
            read = await api.get_collection(name)
            await api.delete_collection(name)
            return created, listed, read

    created, listed, read = asyncio.run(scenario())
    assert created == read and created in listed
    assert collections_named(client_installation, name) == 0
