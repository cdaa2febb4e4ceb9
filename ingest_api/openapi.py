"""The OpenAPI document: every error response is documented as application/problem+json with one schema."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ingest_api.problems import PROBLEM_JSON
from ingest_api.uploads import BODY_PHOTO_TYPES
from schemas.api import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# Status codes any operation of a kind can answer, whatever its handler declares.
SECURED = ("401", "403")
WITH_BODY = ("400", "408", "413", "422", "429")
WITH_PARAMETERS = ("422",)
BACKED = ("503",)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem answers a route declares beyond those of its kind (added in install_openapi)."""
    return {status: {"model": Problem} for status in statuses}


def _problem(status: str) -> dict[str, Any]:
    return {"description": HTTPStatus(int(status)).phrase, "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}


def _photo_as_body(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """An upload whose multipart form has a ``file`` also takes the photo as the whole body (ingest_api/uploads.py)."""
    content = operation.get("requestBody", {}).get("content", {})
    form = content.get("multipart/form-data", {}).get("schema", {})
    fields = schemas.get(str(form.get("$ref", "")).rsplit("/", 1)[-1], form).get("properties", {})
    if "file" in fields:
        content.update({kind: {"schema": {"type": "string", "format": "binary"}} for kind in BODY_PHOTO_TYPES})
        operation["requestBody"]["required"] = True  # one way or the other, a photo


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path, methods in document["paths"].items():
            if path.startswith("/health"):  # health answers are Health documents, also when not ready
                continue
            for operation in methods.values():
                _photo_as_body(operation, schemas)
                responses = operation.setdefault("responses", {})
                extra: list[str] = []
                if operation.get("security"):
                    extra += SECURED
                if "requestBody" in operation:
                    extra += WITH_BODY
                if operation.get("parameters"):
                    extra += WITH_PARAMETERS
                extra += BACKED
                for status in list(responses) + extra:
                    if status.isdigit() and int(status) >= 400:
                        responses[status] = _problem(status)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
