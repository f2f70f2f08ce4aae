"""The OpenAPI document (`/openapi.json`, shown by `/docs` and `/redoc`): what FastAPI derives
from the routes, plus what it cannot see.

- The generation routes read their bodies themselves (size and time bounds, bounded JSON,
  the field policy), so FastAPI does not know their request bodies: the models of
  server/api/protocol.py are added as the `requestBody` of `/v1/chat/completions` and
  `/v1/completions`.
- Every error is OpenAI's `{"error": {"message", "type", "param", "code"}}`: each operation
  lists it for its 4xx and 503 answers, in place of FastAPI's default 422 body (a validation
  error here is a 400).

With `EXPERT_API_DOCS=false` none of the three paths is served.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from server.api.protocol import ChatCompletionRequest, CompletionRequest

REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "details": {},
            },
        }
    },
}

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
# paths that answer without keys and never with an OpenAI error body of their own
PLAIN = {"/health", "/metrics"}

_ERRORS = {
    "400": "invalid request (a value, an unknown field, a body that is not JSON)",
    "401": "missing or invalid API key",
    "403": "an admin key is needed",
    "404": "unknown model, expert or route",
    "408": "the request body was not sent in time",
    "409": "the change needs an engine restart",
    "413": "the request body is too large",
    "422": "the expert folder fails validation",
    "503": "the engine is starting, restarting or dead",
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorResponse"] = ERROR_SCHEMA
    for model in BODIES.values():
        body = model.model_json_schema(ref_template=REF)
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if path in BODIES and method == "post":
                ref = {"$ref": REF.format(model=BODIES[path].__name__)}
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
                responses["200"] = {
                    "description": "the completion (JSON), or a stream of server-sent events with `stream: true`",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                }
            if path in PLAIN:
                responses.pop("422", None)
                continue
            for code, description in _ERRORS.items():
                responses[code] = _error_response(description)
    app.openapi_schema = schema
    return schema
