"""The served ``/openapi.json`` of apps whose handlers read the raw request (to answer bad bodies with their
own OpenAI-style 400s rather than FastAPI's 422s): the request-body schemas come from the pydantic models that
validate those bodies, so what ``/docs`` shows and what schemathesis generates are what the handlers accept.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "integer"},
            },
        }
    },
}


def _schema(models: tuple[type[BaseModel], ...], components: dict[str, Any]) -> dict[str, Any]:
    refs = []
    for m in models:
        schema = m.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[m.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{m.__name__}"})
    return refs[0] if len(refs) == 1 else {"anyOf": refs}


def document_bodies(
    app: FastAPI, bodies: dict[str, tuple[type[BaseModel], ...]], *, bearer_paths: tuple[str, ...] = ()
) -> None:
    """Make ``app.openapi()`` describe the JSON body of each POST path in ``bodies`` (one model, or any of
    several), the OpenAI-style error body, and a bearer token on paths starting with ``bearer_paths``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorResponse"] = ERROR_SCHEMA
        for path, models in bodies.items():
            op = doc["paths"][path]["post"]
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(models, components)}},
            }
            op.setdefault("responses", {})["400"] = {
                "description": "bad request",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }
        if bearer_paths:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in doc["paths"].items():
                if path.startswith(bearer_paths):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
