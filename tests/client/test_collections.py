"""Collections and external ids through the client (issue 18; the server gains them on branch `collections`).

These run where the served API has them, which its OpenAPI document tells: its User schema has `collection`.
Against a server without them they are skipped with that reason; the client's reading and sending of the fields
is covered by test_drift.py and test_models.py either way."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fecapass_client import Fecapass, NotFound

from tests.api.conftest import new_email, photo
from tests.client.conftest import ClientInstallation


@pytest.fixture(scope="module")
def with_collections(base_url: str) -> None:
    document: dict[str, Any] = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    if "collection" not in document["components"]["schemas"]["User"]["properties"]:
        pytest.skip("the served API has no collections yet (issue 18, branch collections): its User has no collection")


@pytest.mark.usefixtures("with_collections")
def test_external_ids_are_stored_and_found(base_url: str, client_installation: ClientInstallation) -> None:
    external_id = f"staff-{uuid.uuid4().hex[:8]}"
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        user = api.create_user(new_email("ext"), "External", collection="default", external_id=external_id)
        assert (user.collection, user.external_id) == ("default", external_id)
        assert api.get_user(user.id) == user
        assert api.list_users(external_id=external_id) == [user]
        assert api.list_users(collection="default", external_id=external_id) == [user]
        assert api.list_users(external_id=f"{external_id}-other") == []


@pytest.mark.usefixtures("with_collections")
def test_an_unknown_collection_is_not_found(base_url: str, client_installation: ClientInstallation) -> None:
    missing = f"nowhere-{uuid.uuid4().hex[:8]}"
    queued = client_installation.queued()
    with Fecapass(base_url, client_installation.keys["write"]) as api:
        for call in (
            lambda: api.list_users(collection=missing),
            lambda: api.create_user(new_email("lost"), collection=missing),
            lambda: api.search(photo(seed=81), collection=missing),
        ):
            with pytest.raises(NotFound) as not_found:
                call()
            assert not_found.value.code == "collection_not_found"
    assert client_installation.queued() == queued
