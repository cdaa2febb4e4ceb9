"""Merge and move through the client against the real API: the owner of each face counted in PostgreSQL before and
after, repeats changing nothing, and the refusals as exceptions by code. Faces are made as the index stage leaves
them (tests/api/test_corrections.py's helper): no model is needed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fecapass_client import AsyncFecapass, Conflict, Face, Fecapass, NotFound, User, ValidationFailed

from tests.api.conftest import new_email
from tests.api.test_corrections import served_face
from tests.client.conftest import ClientInstallation


def faces_of(installation: ClientInstallation, user_id: int) -> list[int]:
    """Face ids (served or not) of the user, from PostgreSQL."""
    return [int(str(face_id)) for (face_id,) in installation.sql("SELECT id FROM faces WHERE user_id = %s", user_id)]


def users_with_id(installation: ClientInstallation, user_id: int) -> int:
    (row,) = installation.sql("SELECT count(*) FROM users WHERE id = %s", user_id)
    return int(str(row[0]))


def person_with_faces(api: Fecapass, installation: ClientInstallation, faces: int, collection: str = "default") -> User:
    user = api.create_user(new_email("person"), "Person", collection=collection)
    row = installation.main.collection_named(collection)
    assert row is not None
    for _ in range(faces):
        served_face(installation.as_api_installation(), user.id, row.id)
    return user


def test_merge_moves_every_face_and_erases_the_merged_person(
    base_url: str, client_installation: ClientInstallation
) -> None:
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        into = person_with_faces(api, client_installation, 1)
        merged = person_with_faces(api, client_installation, 2)
        theirs = faces_of(client_installation, merged.id)
        everyone = sorted(faces_of(client_installation, into.id) + theirs)
        answer = api.merge_users(into.id, merged.id)
        assert isinstance(answer, User) and answer.id == into.id and answer.collection == "default"
        assert sorted(faces_of(client_installation, into.id)) == everyone
        assert users_with_id(client_installation, merged.id) == 0
        assert {face.id for face in api.list_faces(into.id)} == set(everyone)
        assert api.merge_users(into.id, merged.id).id == into.id  # done already: the same end state
        assert sorted(faces_of(client_installation, into.id)) == everyone
        with pytest.raises(NotFound) as gone:
            api.get_user(merged.id)
        assert gone.value.code == "user_not_found"


def test_move_gives_one_face_to_another_person(base_url: str, client_installation: ClientInstallation) -> None:
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        wrong = person_with_faces(api, client_installation, 2)
        right = person_with_faces(api, client_installation, 0)
        moved_id, kept_id = sorted(faces_of(client_installation, wrong.id))
        face = api.move_face(moved_id, right.id)
        assert isinstance(face, Face) and (face.id, face.user_id, face.collection) == (moved_id, right.id, "default")
        assert faces_of(client_installation, right.id) == [moved_id]
        assert faces_of(client_installation, wrong.id) == [kept_id]
        assert api.move_face(moved_id, right.id) == api.get_face(moved_id)  # moved again to where it is: no change
        assert faces_of(client_installation, right.id) == [moved_id]


def test_corrections_refused_by_code(base_url: str, client_installation: ClientInstallation) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    with Fecapass(base_url, client_installation.keys["admin"]) as api:
        api.create_collection(site)
        here = person_with_faces(api, client_installation, 1)
        elsewhere = person_with_faces(api, client_installation, 1, collection=site)
        (face_id,) = faces_of(client_installation, here.id)
        (their_face,) = faces_of(client_installation, elsewhere.id)

        with pytest.raises(ValidationFailed) as itself:
            api.merge_users(here.id, here.id)
        assert (itself.value.status, itself.value.code) == (422, "merge_into_itself")
        for call in (lambda: api.merge_users(here.id, elsewhere.id), lambda: api.move_face(face_id, elsewhere.id)):
            with pytest.raises(Conflict) as mismatch:
                call()
            assert mismatch.value.code == "collection_mismatch"
        with pytest.raises(NotFound) as no_user:
            api.merge_users(here.id, 2**62)
        assert no_user.value.code == "user_not_found"
        with pytest.raises(NotFound) as no_face:
            api.move_face(2**62, here.id)
        assert no_face.value.code == "face_not_found"
        with pytest.raises(TypeError):
            api.move_face("1/../../users/1", here.id)  # type: ignore[arg-type]
    # A key limited to the other collection cannot take this person's face, nor learn it exists.
    row = client_installation.main.collection_named(site)
    assert row is not None
    with Fecapass(base_url, client_installation.new_key("write", [row.id])) as limited:
        with pytest.raises(NotFound) as hidden:
            limited.move_face(face_id, elsewhere.id)
        assert hidden.value.code == "face_not_found"
        with pytest.raises(NotFound) as hidden_user:
            limited.merge_users(elsewhere.id, here.id)
        assert hidden_user.value.code == "user_not_found"
    assert (faces_of(client_installation, here.id), faces_of(client_installation, elsewhere.id)) == (
        [face_id],
        [their_face],
    )
    assert users_with_id(client_installation, here.id) == 1


def test_the_async_client_merges_and_moves_alike(base_url: str, client_installation: ClientInstallation) -> None:
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        into = person_with_faces(api, client_installation, 1)
        merged = person_with_faces(api, client_installation, 1)
        other = person_with_faces(api, client_installation, 0)
    (merged_face,) = faces_of(client_installation, merged.id)

    async def scenario() -> tuple[User, Face]:
        async with AsyncFecapass(base_url, client_installation.keys["write"]) as api:
            return await api.merge_users(into.id, merged.id), await api.move_face(merged_face, other.id)

    user, face = asyncio.run(scenario())
    assert user.id == into.id and face.user_id == other.id
    assert faces_of(client_installation, other.id) == [merged_face] and len(faces_of(client_installation, into.id)) == 1
    assert users_with_id(client_installation, merged.id) == 0
