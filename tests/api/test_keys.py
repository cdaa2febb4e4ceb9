"""API keys and scopes: every /v1 operation of the OpenAPI document is refused without a valid key, and every
write operation is refused to a read key, before the request's body counts for anything."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from common.apikeys import Scope
from ingest_api.app import V1_ROUTERS, create_app
from ingest_api.auth import READ, check_every_operation_declared, declared_scope
from schemas.jobs import job_key
from tests.api.conftest import Installation, key, new_email, photo

pytestmark = pytest.mark.integration

# The scope each operation needs, written out here (not read from the code): a new operation fails
# test_every_operation_is_listed until someone decides its scope.
SCOPES = {
    ("POST", "/v1/users"): "write",
    ("GET", "/v1/users"): "read",
    ("GET", "/v1/users/{user_id}"): "read",
    ("PATCH", "/v1/users/{user_id}"): "write",
    ("DELETE", "/v1/users/{user_id}"): "write",
    ("POST", "/v1/users/{user_id}/merge"): "write",
    ("POST", "/v1/users/{user_id}/faces"): "write",
    ("GET", "/v1/users/{user_id}/faces"): "read",
    ("GET", "/v1/faces/{face_id}"): "read",
    ("DELETE", "/v1/faces/{face_id}"): "write",
    ("POST", "/v1/faces/{face_id}/move"): "write",
    ("POST", "/v1/search"): "read",
    ("POST", "/v1/verify"): "read",
    ("POST", "/v1/detect"): "read",
    ("GET", "/v1/jobs/{job_id}"): "read",
    ("GET", "/v1/me"): "read",
    ("GET", "/v1/pipeline"): "read",
    ("GET", "/v1/pipeline/dead-letters"): "read",
    ("POST", "/v1/pipeline/dead-letters/{stage}/{message_id}/replay"): "write",
    ("DELETE", "/v1/pipeline/dead-letters/{stage}/{message_id}"): "write",
    ("DELETE", "/v1/pipeline/dead-letters/{stage}"): "write",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("GET", "/v1/collections"): "read",
    ("GET", "/v1/collections/{name}"): "read",
    ("POST", "/v1/collections"): "admin",
    ("DELETE", "/v1/collections/{name}"): "admin",
    ("GET", "/v1/clusters"): "read",
    ("POST", "/v1/clusters/{cluster_id}/name"): "write",
    ("POST", "/v1/clusters/{cluster_id}/dismiss"): "write",
    ("POST", "/v1/faces/{face_id}/not-this-person"): "write",
    ("GET", "/v1/collections/{collection}/unknown-faces"): "read",
    ("PATCH", "/v1/collections/{collection}/unknown-faces"): "admin",
}
# The keys that may use an operation of each scope.
ALLOWED = {"read": ("read", "write", "admin"), "write": ("write", "admin"), "admin": ("admin",)}


def operations(api: TestClient) -> list[tuple[str, str]]:
    paths = api.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, methods in paths.items() for method in methods]


def concrete(path: str, user_id: int = 1, key_id: int = 0) -> str:
    """``path`` with its ids filled in: ``key_id`` apart from the others, so that a DELETE of /v1/keys/{key_id}
    revokes the key it was given (no key has id 0), never one of the installation's keys whose id the user's id
    happens to be."""
    path = re.sub(r"\{key_id\}", str(key_id), re.sub(r"\{job_id\}", "0" * 32, path))
    return re.sub(r"\{\w+_id\}", str(user_id), path)


def test_every_operation_is_listed(api: TestClient) -> None:
    secured = {operation for operation in operations(api) if operation[1].startswith("/v1")}
    assert secured == set(SCOPES)
    assert all(not path.startswith("/v1") for _, path in set(operations(api)) - secured)


def test_every_v1_operation_needs_a_valid_key(api: TestClient, installation: Installation) -> None:
    before = installation.submitted()
    for method, path in SCOPES:
        url = concrete(path)
        for headers, code in (
            ({}, "missing_api_key"),
            ({"X-API-Key": ""}, "missing_api_key"),
            ({"X-API-Key": "fcp_made_up"}, "invalid_api_key"),
            ({"X-API-Key": installation.keys["read"] + "x"}, "invalid_api_key"),
            (key(installation, "revoked"), "invalid_api_key"),
        ):
            # A body the route would accept, or one it would refuse: the key decides first either way.
            for body in ({"files": {"file": ("a.jpg", photo())}}, {"content": b"{not json"}):
                response = api.request(method, url, headers=headers, **body)  # type: ignore[arg-type]
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["code"] == code and response.headers["www-authenticate"] == "ApiKey"
                assert response.headers["content-type"] == "application/problem+json"
    assert installation.submitted() == before


def test_a_read_key_may_not_write(api: TestClient, installation: Installation) -> None:
    user_id = installation.main.create_user(new_email("reader-target"), "Target").id
    users_before = len(installation.main.list_users(0, 100_000))
    before = installation.submitted()
    for (method, path), scope in SCOPES.items():
        if scope == "read":
            continue
        url = concrete(path, user_id)
        for body in ({"files": {"file": ("a.jpg", photo())}}, {"json": {"email": new_email("reader")}}, {}):
            response = api.request(method, url, headers=key(installation, "read"), **body)  # type: ignore[arg-type]
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["code"] == "insufficient_scope"
    assert installation.main.get_user(user_id) is not None
    assert len(installation.main.list_users(0, 100_000)) == users_before
    assert installation.submitted() == before


def test_read_and_write_keys_reach_what_their_scope_allows(api: TestClient, installation: Installation) -> None:
    user_id = installation.main.create_user(new_email("scoped"), "Scoped").id
    spare = installation.main.create_api_key("scoped-spare", "read").row.id  # what DELETE /v1/keys/{key_id} revokes
    for (method, path), scope in SCOPES.items():
        for name in ALLOWED[scope]:
            response = api.request(method, concrete(path, user_id, spare), headers=key(installation, name))
            assert response.status_code not in (401, 403), (method, path, name, response.text)
    # Of the installation's keys, only the spare was revoked.
    live = {row.name for row in installation.main.list_api_keys() if row.revoked_at is None}
    assert {"api-tests-read", "api-tests-write", "api-tests-admin"} <= live and "scoped-spare" not in live


def test_a_write_key_may_not_manage_keys(api: TestClient, installation: Installation) -> None:
    keys_before = len(installation.main.list_api_keys())
    for (method, path), scope in SCOPES.items():
        if scope != "admin":
            continue
        body = {"json": {"name": "escalated", "scope": "admin"}}
        response = api.request(method, concrete(path), headers=key(installation, "write"), **body)  # type: ignore[arg-type]
        assert response.status_code == 403 and response.json()["code"] == "insufficient_scope", (method, path)
    assert len(installation.main.list_api_keys()) == keys_before


def test_keys_and_scopes(api: TestClient, installation: Installation) -> None:
    assert api.get("/v1/users").json()["code"] == "missing_api_key"
    assert api.get("/v1/users", headers={"X-API-Key": "fcp_made_up"}).status_code == 401
    assert api.get("/health/live").status_code == 200 and api.get("/metrics").status_code == 200
    read = key(installation, "read")
    assert api.get("/v1/users", headers=read).status_code == 200
    email = new_email("reader")
    forbidden = api.post("/v1/users", json={"email": email}, headers=read)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "insufficient_scope"
    assert email not in [user.email for user in installation.main.list_users(0, 100_000)]
    assert api.delete("/v1/users/1", headers=read).status_code == 403
    assert api.post("/v1/users/1/faces", files={"file": ("a.jpg", photo())}, headers=read).status_code == 403
    assert api.get("/v1/users", headers=key(installation, "revoked")).json()["code"] == "invalid_api_key"


def test_a_job_is_read_only_with_a_key(api: TestClient, installation: Installation) -> None:
    submitted = api.post("/v1/search", files={"file": ("a.jpg", photo())}, headers=key(installation, "read"))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    assert installation.redis.hget(job_key(job_id), "state") == b"queued"
    for headers in ({}, {"X-API-Key": "fcp_made_up"}, key(installation, "revoked")):
        refused = api.get(f"/v1/jobs/{job_id}", headers=headers)
        assert refused.status_code == 401 and "result" not in refused.json() and job_id not in refused.text
    for scope in ("read", "write"):
        job = api.get(f"/v1/jobs/{job_id}", headers=key(installation, scope))
        assert job.status_code == 200 and job.json()["job_id"] == job_id and job.json()["state"] == "queued"


@pytest.mark.parametrize(
    "path", ["/v1/users/", "/v1/users?x=1", "/v1/%75sers", "/v1/users/%31", "/v1/users/1/faces/", "/v1/jobs/x/", "/v1/"]
)
def test_no_spelling_of_a_v1_path_avoids_the_key(api: TestClient, path: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = api.request(method, path, follow_redirects=False)
        assert response.status_code == 401, (method, path, response.status_code)


def test_a_root_path_does_not_move_the_key_check(installation: Installation) -> None:
    """Behind a proxy that strips a prefix (uvicorn --root-path), /v1 is still found under it."""
    with TestClient(create_app(installation.config()), root_path="/fecapass") as client:
        assert client.get("/fecapass/v1/users").status_code == 401
        assert client.get("/fecapass/v1/users", headers=key(installation, "read")).status_code == 200


def test_a_route_reached_without_the_key_check_fails_closed() -> None:
    """The scope dependency does not stand in for the middleware: without it, the route serves nothing."""
    app = FastAPI()
    router = APIRouter(prefix="/v1", dependencies=[READ])

    @router.get("/secret")
    async def secret() -> dict[str, str]:
        return {"secret": "s"}

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/secret", headers={"X-API-Key": "fcp_anything"})
    assert response.status_code == 500 and "secret" not in response.text


def test_a_v1_router_the_key_check_does_not_know_stops_the_start(installation: Installation) -> None:
    app = create_app(installation.config())
    stray = APIRouter(prefix="/v1/stray")

    @stray.post("")
    async def stray_write() -> None:
        return None

    app.include_router(stray)
    app.openapi_schema = None
    with pytest.raises(RuntimeError, match="/v1/stray"):
        check_every_operation_declared(app, [route for router in V1_ROUTERS for route in router.routes])
    assert declared_scope(stray.routes[0]) is Scope.WRITE  # and had it been listed, it would need a write key
