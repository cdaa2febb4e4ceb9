"""Users through the API: create, page, update, erase, and what a request body may hold."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration


def create_user(api: TestClient, installation: Installation, name: str, domain: str = "example.com") -> int:
    response = api.post(
        "/v1/users", json={"email": new_email(name, domain), "full_name": name}, headers=key(installation, "write")
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_user_crud_and_pagination(api: TestClient, installation: Installation) -> None:
    write = key(installation, "write")
    ids = [create_user(api, installation, f"page{index}") for index in range(5)]
    first = api.get("/v1/users", params={"after": ids[0] - 1, "limit": 2}, headers=write).json()
    assert [u["id"] for u in first["items"]] == ids[:2] and first["next_after"] == ids[1]
    second = api.get("/v1/users", params={"after": first["next_after"], "limit": 2}, headers=write).json()
    assert [u["id"] for u in second["items"]] == ids[2:4]
    updated = api.patch(f"/v1/users/{ids[0]}", json={"full_name": "New Name", "is_active": False}, headers=write)
    assert updated.status_code == 200 and updated.json()["full_name"] == "New Name"
    assert updated.json()["is_active"] is False
    stored = installation.main.get_user(ids[0])
    assert stored is not None and stored.full_name == "New Name" and stored.is_active is False
    taken = api.get(f"/v1/users/{ids[1]}", headers=write).json()["email"]
    clash = api.patch(f"/v1/users/{ids[0]}", json={"email": taken.upper()}, headers=write)
    assert clash.status_code == 409 and clash.json()["code"] == "email_taken"
    assert api.patch("/v1/users/999999999", json={"full_name": "x"}, headers=write).status_code == 404
    nul = api.post("/v1/users", json={"email": "nul@example.com", "full_name": "a\u0000b"}, headers=write)
    assert nul.status_code == 422 and nul.json()["code"] == "invalid_request"
    # An inactive user can neither enroll nor be verified; nothing of the photo is kept.
    before = installation.submitted()
    enroll = api.post(f"/v1/users/{ids[0]}/faces", files={"file": ("a.jpg", photo())}, headers=write)
    assert enroll.status_code == 404 and enroll.json()["code"] == "user_not_found"
    verify = api.post("/v1/verify", params={"user_id": ids[0]}, files={"file": ("a.jpg", photo())}, headers=write)
    assert verify.status_code == 404 and verify.json()["code"] == "user_not_found"
    assert installation.submitted() == before


def test_deleting_a_user_without_faces(api: TestClient, installation: Installation) -> None:
    write = key(installation, "write")
    user_id = create_user(api, installation, "erase-me")
    assert api.get(f"/v1/users/{user_id}/faces", headers=write).json() == []
    assert api.delete(f"/v1/users/{user_id}", headers=write).status_code == 204
    assert installation.main.get_user(user_id) is None
    assert api.get(f"/v1/users/{user_id}", headers=write).json()["code"] == "user_not_found"
    assert api.delete(f"/v1/users/{user_id}", headers=write).json()["code"] == "user_not_found"
    assert api.get(f"/v1/users/{user_id}/faces", headers=write).json()["code"] == "user_not_found"
    assert api.get("/v1/faces/999999999", headers=write).json()["code"] == "face_not_found"
    assert api.delete("/v1/faces/999999999", headers=write).json()["code"] == "face_not_found"


@pytest.mark.parametrize("value", ["off", "on", "1", "true", 0, 1, None])
def test_is_active_takes_only_json_booleans(api: TestClient, installation: Installation, value: object) -> None:
    write = key(installation, "write")
    user_id = create_user(api, installation, "strict")
    response = api.patch(f"/v1/users/{user_id}", json={"is_active": value}, headers=write)
    if value is None:  # null: leave it as it is
        assert response.status_code == 200 and response.json()["is_active"] is True
    else:
        assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    stored = installation.main.get_user(user_id)
    assert stored is not None and stored.is_active is True
    for flag in (False, True):
        assert api.patch(f"/v1/users/{user_id}", json={"is_active": flag}, headers=write).json()["is_active"] is flag


@pytest.mark.parametrize("domain", ["example.test", "mail.corp.test", "intranet"])
def test_email_on_special_use_and_local_domains_is_accepted(
    api: TestClient, installation: Installation, domain: str
) -> None:
    user_id = create_user(api, installation, "special", domain)
    stored = installation.main.get_user(user_id)
    assert stored is not None and stored.email.endswith("@" + domain)


@pytest.mark.parametrize("email", ["no-at-sign", "two@@example.com", "a b@example.com", "a@-example.com", ""])
def test_invalid_email_is_refused(api: TestClient, installation: Installation, email: str) -> None:
    response = api.post("/v1/users", json={"email": email}, headers=key(installation, "write"))
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    assert response.json()["detail"].startswith("body.email")


def test_405_names_every_method_of_the_path(api: TestClient, installation: Installation) -> None:
    read = key(installation, "read")
    for method, path, allowed in (
        ("OPTIONS", "/v1/users", "GET, POST"),
        ("PUT", "/v1/users", "GET, POST"),
        ("PUT", "/v1/users/1", "DELETE, GET, PATCH"),
        ("PATCH", "/v1/users/1/faces", "GET, POST"),
        ("POST", "/v1/jobs/abc", "GET"),
        ("POST", "/health/live", "GET"),
    ):
        response = api.request(method, path, headers=read)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json()["code"] == "method_not_allowed"
