"""The client's dataclasses and requests against the served API's OpenAPI document: a field, parameter or body
property renamed or added on either side fails here, not in a user's program.

Issue 18 adds collections and external ids to the API (branch `collections`); the client already reads and
sends them. Until the server has them, they are the only fields and parameters the client may have that the
document lacks (ANNOUNCED); once it has them they are compared like any other."""

from __future__ import annotations

import dataclasses
from typing import Any

import fecapass_client.models as models
import httpx
import pytest
from fecapass_client import Fecapass

ANNOUNCED_FIELDS = {
    "User": {"collection", "external_id"},
    "Face": {"collection", "external_id"},
    "Match": {"external_id"},
}
ANNOUNCED_PARAMETERS = {
    ("get", "/v1/users"): {"collection", "email", "external_id"},
    ("post", "/v1/users/{user_id}/faces"): {"external_id"},
    ("post", "/v1/search"): {"collection"},
    ("post", "/v1/verify"): {"collection"},
    ("post", "/v1/detect"): {"collection"},
}
ANNOUNCED_BODY = {
    ("post", "/v1/users"): {"collection", "external_id"},
    ("patch", "/v1/users/{user_id}"): {"external_id"},
}
# Dataclass -> the component schema it reads.
COMPONENTS = [
    models.User,
    models.UserPage,
    models.Face,
    models.FoundFace,
    models.Quality,
    models.DetectedFace,
    models.VerifiedFace,
    models.Match,
    models.SearchFace,
    models.EnrollResult,
    models.SearchResult,
    models.VerifyResult,
    models.DetectResult,
    models.ReindexResult,
    models.JobError,
    models.Job,
    models.Me,
    models.Health,
]


@pytest.fixture(scope="module")
def openapi(base_url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    return document


@pytest.mark.parametrize("model", COMPONENTS, ids=lambda model: model.__name__)
def test_dataclass_fields_match_the_component_schema(openapi: dict[str, Any], model: type[Any]) -> None:
    schema = openapi["components"]["schemas"][model.__name__]
    served, required = set(schema["properties"]), set(schema.get("required", []))
    fields = {spec.name: spec for spec in dataclasses.fields(model) if not spec.metadata.get("client_only")}
    assert served <= fields.keys(), f"the API sends {sorted(served - fields.keys())} that {model.__name__} lacks"
    assert fields.keys() - served <= ANNOUNCED_FIELDS.get(model.__name__, set()), "fields the API does not send"
    # Required by the API <=> no default in the dataclass (an optional field must not fail a parse).
    without_default = {
        name
        for name, spec in fields.items()
        if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
    }
    assert without_default == required, model.__name__


def test_problem_fields_are_those_the_errors_carry(openapi: dict[str, Any]) -> None:
    assert {"status", "code", "detail", "job_id"} <= set(openapi["components"]["schemas"]["Problem"]["properties"])


def test_requests_name_only_parameters_and_properties_the_api_has(openapi: dict[str, Any]) -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/v1/users" and request.method == "GET":
            return httpx.Response(200, json={"items": [], "next_after": None})
        if "/faces" in request.url.path or "/users" not in request.url.path:
            job = {"job_id": "j", "kind": "detect", "state": "done", "status_url": "u", "image_key": "k"}
            return httpx.Response(200, json=job)
        when = "2026-01-01T00:00:00Z"
        user = {"id": 1, "email": "a@example.com", "full_name": "", "is_active": True}
        return httpx.Response(200, json={**user, "created_at": when, "updated_at": when})

    with Fecapass("http://fecapass.test", "key", transport=httpx.MockTransport(answer)) as api:
        every = {"collection": "default", "wait": 1.0, "idempotency_key": "k", "callback_url": "https://hook.test/"}
        api.create_user("a@example.com", "A", collection="default", external_id="e-1", idempotency_key="k")
        api.update_user(1, email="b@example.com", full_name="B", is_active=True, external_id="e-2")
        api.list_users(collection="default", email="a@example.com", external_id="e-1", query="a", limit=10)
        api.enroll(1, b"p", external_id="f-1", wait=1.0, idempotency_key="k", callback_url="https://hook.test/")
        api.search(b"p", threshold=0.5, limit=3, **every)  # type: ignore[arg-type]
        api.verify(b"p", user_id=1, threshold=0.5, **every)  # type: ignore[arg-type]
        api.verify(b"p", second_photo=b"q", **every)  # type: ignore[arg-type]
        api.detect(b"p", **every)  # type: ignore[arg-type]
        api.wait_for_job("j", timeout=5)

    paths = openapi["paths"]
    for request in sent:
        method = request.method.lower()
        template = next(
            path for path, operations in paths.items() if method in operations and _matches(path, request.url.path)
        )
        operation = paths[template][method]
        announced_parameters = ANNOUNCED_PARAMETERS.get((method, template), set())
        parameters = {parameter["name"] for parameter in operation.get("parameters", [])}
        assert set(request.url.params) - parameters <= announced_parameters, (method, template)
        header_names = {p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"}
        if "idempotency-key" in request.headers:
            assert "idempotency-key" in header_names, (method, template)
        body = operation.get("requestBody", {}).get("content", {})
        if request.headers.get("content-type") == "application/json":
            reference = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            properties = set(openapi["components"]["schemas"][reference]["properties"])
            sent_body = set(httpx.Response(200, content=request.content).json())
            assert sent_body - properties <= ANNOUNCED_BODY.get((method, template), set()), (method, template)
        elif request.method == "POST":
            form = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
            fields = set(openapi["components"]["schemas"][form]["properties"])
            assert {name for name in ("file", "second_file") if f'name="{name}"'.encode() in request.content} <= fields


def _matches(template: str, path: str) -> bool:
    wanted, got = template.split("/"), path.split("/")
    return len(wanted) == len(got) and all(w == g or w.startswith("{") for w, g in zip(wanted, got, strict=True))
