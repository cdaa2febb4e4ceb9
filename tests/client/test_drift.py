"""The client's dataclasses and requests against the served API's OpenAPI document: a field, parameter or body
property renamed or added on either side fails here, not in a user's program.

Nothing is allowed to differ: a field or parameter the client has that the document lacks fails as well."""

from __future__ import annotations

import dataclasses
from typing import Any

import fecapass_client.models as models
import httpx
import pytest
from fecapass_client import Fecapass

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
    models.Collection,
    models.ClusterSample,
    models.Cluster,
    models.ClusterPage,
    models.NamedCluster,
    models.DismissedCluster,
    models.ReturnedFace,
    models.UnknownFacesPolicy,
]
WHEN = "2026-01-01T00:00:00Z"
USER = {"id": 1, "email": "a@example.com", "full_name": "", "is_active": True, "collection": "default"}
USER |= {"external_id": None, "created_at": WHEN, "updated_at": WHEN}
FACE = {"id": 2, "user_id": 1, "collection": "default", "external_id": None, "box": [1, 2, 3, 4], "det_score": 0.9}
FACE |= {"faces_seen": 1, "model_pack": "p", "created_at": WHEN, "photo_url": "u", "crop_url": "c"}
COLLECTION = {"name": "default", "keep_unknown_faces": False, "unknown_retention_hours": 720, "created_at": WHEN}
POLICY = {"collection": "default", "keep_unknown_faces": True, "unknown_retention_hours": 24}
JOB = {"job_id": "j", "kind": "detect", "state": "done", "status_url": "u", "image_key": "k"}
# What the mock API answers, by the request's method and last path segment.
ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "users"): {"items": [], "next_after": None},
    ("GET", "collections"): [COLLECTION],
    ("POST", "collections"): COLLECTION,
    ("GET", "clusters"): {"items": [], "next_after": None},
    ("POST", "name"): {"cluster_id": 3, "user_id": 1, "user_created": True, "faces_added": 2, "faces_left_out": 0},
    ("POST", "dismiss"): {"cluster_id": 3, "faces_erased": 2},
    ("POST", "not-this-person"): {"face_id": 2, "user_id": 1, "unknown_face_id": 4, "cluster_id": None},
    ("GET", "unknown-faces"): POLICY,
    ("PATCH", "unknown-faces"): POLICY,
    ("POST", "move"): FACE,
    ("POST", "merge"): USER,
}


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
    assert fields.keys() <= served, f"{model.__name__} has {sorted(fields.keys() - served)} that the API does not send"
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
        path = request.url.path
        if request.method == "DELETE":
            return httpx.Response(204)
        known = ANSWERS.get((request.method, path.rsplit("/", 1)[1]))
        if known is not None:
            return httpx.Response(200, json=known)
        if path.startswith("/v1/collections/"):
            return httpx.Response(200, json=COLLECTION)
        if "/faces" in path or "/users" not in path:
            return httpx.Response(200, json=JOB)
        return httpx.Response(200, json=USER)

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
        api.merge_users(1, 5)
        api.move_face(2, 1)
        api.list_collections()
        api.get_collection("site-a")
        api.create_collection("site-a")
        api.delete_collection("site-a")
        api.list_clusters(collection="site-a", limit=10)
        api.name_cluster(3, user_id=1, idempotency_key="k")
        api.name_cluster(3, email="a@example.com", full_name="A")
        api.dismiss_cluster(3)
        api.not_this_person(2)
        api.unknown_faces_policy("site-a")
        api.set_unknown_faces_policy("site-a", keep=True, retention_hours=24)

    paths = openapi["paths"]
    for request in sent:
        method = request.method.lower()
        template = next(
            path for path, operations in paths.items() if method in operations and _matches(path, request.url.path)
        )
        operation = paths[template][method]
        parameters = {parameter["name"] for parameter in operation.get("parameters", [])}
        assert set(request.url.params) <= parameters, (method, template)
        header_names = {p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"}
        if "idempotency-key" in request.headers:
            assert "idempotency-key" in header_names, (method, template)
        body = operation.get("requestBody", {}).get("content", {})
        if request.headers.get("content-type") == "application/json":
            reference = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            properties = set(openapi["components"]["schemas"][reference]["properties"])
            sent_body = set(httpx.Response(200, content=request.content).json())
            assert sent_body <= properties, (method, template)
        elif request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
            fields = set(openapi["components"]["schemas"][form]["properties"])
            assert {name for name in ("file", "second_file") if f'name="{name}"'.encode() in request.content} <= fields
        else:  # no body: the API must not need one
            assert not request.content and not operation.get("requestBody", {}).get("required"), (method, template)


def _matches(template: str, path: str) -> bool:
    wanted, got = template.split("/"), path.split("/")
    return len(wanted) == len(got) and all(w == g or w.startswith("{") for w, g in zip(wanted, got, strict=True))
