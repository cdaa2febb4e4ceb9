"""People through the client against the real API: create, read, list (every page), update, erase, counted in
PostgreSQL; and the API's errors as the client's exceptions, by status and code."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from fecapass_client import (
    AsyncFecapass,
    Conflict,
    Fecapass,
    FecapassError,
    Forbidden,
    NotFound,
    Unauthorized,
    User,
    ValidationFailed,
)

from tests.api.conftest import new_email
from tests.client.conftest import AsyncRecording, ClientInstallation, Recording


def test_users_crud(base_url: str, client_installation: ClientInstallation) -> None:
    email = new_email("ada")
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        created = api.create_user(email, "Ada Lovelace")
        assert isinstance(created, User) and created.email == email and created.full_name == "Ada Lovelace"
        assert created.is_active and isinstance(created.created_at, datetime) and created.created_at.tzinfo
        assert client_installation.users_with_email(email) == 1
        assert api.get_user(created.id) == created

        renamed = api.update_user(created.id, full_name="A. Lovelace", is_active=False)
        assert (renamed.id, renamed.full_name, renamed.is_active, renamed.email) == (
            created.id,
            "A. Lovelace",
            False,
            email,
        )
        assert renamed.updated_at >= created.updated_at
        assert api.list_faces(created.id) == []

        api.delete_user(created.id)
        assert client_installation.users_with_email(email) == 0
        with pytest.raises(NotFound) as gone:
            api.get_user(created.id)
        assert gone.value.code == "user_not_found" and gone.value.status == 404


def test_list_users_follows_every_page_and_filters_by_email(
    base_url: str, client_installation: ClientInstallation
) -> None:
    token = uuid.uuid4().hex[:10]
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["write"], transport=transport) as api:
        made = [api.create_user(f"p{n}.{token}@example.com", f"Person {n} {token}") for n in range(5)]
        transport.requests.clear()
        listed = api.list_users(query=token, limit=2)
        assert [user.id for user in listed] == [user.id for user in made]
        pages = [request for request in transport.requests if request.url.path == "/v1/users"]
        assert [request.url.params["after"] for request in pages] == ["0", str(made[1].id), str(made[3].id)]
        # The exact address, any case, and no other user whose name or email merely contains it.
        api.create_user(f"x{made[2].email}", "contains the other's address")
        assert api.list_users(email=made[2].email.upper()) == [made[2]]
        assert api.list_users(email=f"nobody.{token}@example.com") == []
        # Longer than the API's `q` takes (200): matched by the client alone, not refused by the API.
        assert api.list_users(email=f"{'n' * 64}@{'d' * 63}.{'e' * 63}.{token}.example.com") == []


def test_errors_are_exceptions_by_status_and_code(base_url: str, client_installation: ClientInstallation) -> None:
    keys = client_installation.keys
    with Fecapass(base_url, keys["write"]) as api:
        user = api.create_user(new_email("taken"))
        with pytest.raises(Conflict) as taken:
            api.create_user(user.email.upper())
        assert (taken.value.status, taken.value.code) == (409, "email_taken")
        assert user.email in taken.value.detail.casefold()
        with pytest.raises(ValidationFailed) as invalid:
            api.create_user("not an address")
        assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
        for missing, code in (
            (lambda: api.get_user(999_999_999), "user_not_found"),
            (lambda: api.list_faces(999_999_999), "user_not_found"),
            (lambda: api.delete_face(999_999_999), "face_not_found"),
            (lambda: api.get_job("0" * 32), "job_not_found"),
        ):
            with pytest.raises(NotFound) as not_found:
                missing()
            assert not_found.value.code == code
    for key, code in ((keys["revoked"], "invalid_api_key"), ("not-a-key", "invalid_api_key")):
        with Fecapass(base_url, key) as stranger, pytest.raises(Unauthorized) as refused:
            stranger.me()
        assert (refused.value.status, refused.value.code) == (401, code)
    email = new_email("reader")
    with Fecapass(base_url, keys["read"]) as reader:
        assert reader.me().scope == "read"
        with pytest.raises(Forbidden) as forbidden:
            reader.create_user(email)
        assert forbidden.value.code == "insufficient_scope"
    assert client_installation.users_with_email(email) == 0


def test_ids_cannot_carry_a_path(base_url: str, client_installation: ClientInstallation) -> None:
    """A job id is escaped into one path segment, and user ids must be ints: no call reaches another route."""
    transport = Recording()
    with Fecapass(base_url, client_installation.keys["admin"], transport=transport) as api:
        for job_id in ("../../v1/keys", "x?wait=1", "%2e%2e"):
            # The admin key would list the API keys at /v1/keys: a 404 (of the route or the job) shows it did not.
            with pytest.raises(NotFound) as escaped:
                api.get_job(job_id)
            assert escaped.value.code in ("job_not_found", "not_found")
        with pytest.raises(TypeError):
            api.get_user("1/../../keys")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            api.delete_user(True)  # type: ignore[arg-type]
    sent = [request.url.raw_path.split(b"?")[0] for request in transport.requests]
    assert all(path.startswith(b"/v1/jobs/") and path.count(b"/") == 3 for path in sent), sent


def test_the_async_twin_gives_the_same_answers(base_url: str, client_installation: ClientInstallation) -> None:
    key = client_installation.keys["write"]
    email = new_email("twin")

    async def scenario() -> tuple[User, User, list[User], str, list[str]]:
        transport = AsyncRecording()
        async with AsyncFecapass(base_url, key, transport=transport) as api:
            created = await api.create_user(email, "Twin")
            got, listed = await asyncio.gather(api.get_user(created.id), api.list_users(email=email))
            codes = []
            for failing in (api.create_user(email), api.get_user(999_999_999), api.create_user("bad")):
                try:
                    await failing
                except FecapassError as exc:
                    codes.append(f"{type(exc).__name__}:{exc.code}")
            scope = (await api.me()).scope
            await api.delete_user(created.id)
            return created, got, listed, scope, codes

    created, got, listed, scope, codes = asyncio.run(scenario())
    assert got == created and listed == [created] and scope == "write"
    assert codes == ["Conflict:email_taken", "NotFound:user_not_found", "ValidationFailed:invalid_request"]
    with Fecapass(base_url, key) as sync, pytest.raises(NotFound):
        sync.get_user(created.id)
    assert client_installation.users_with_email(email) == 0
