"""The OpenAPI schema as the server answers: error statuses, the real error body, auth.

FastAPI documents each operation's success and a 422 with its own HTTPValidationError,
while every error here is {"error": {"code", "message", "details"?}} (errors.py) and
routes also answer 401, 403, 404, 409, 413 and 429. This completes the generated
schema once, from rules that follow the routes' conventions, so generated clients and
schema fuzzers can trust it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. slug_taken"},
                "message": {"type": "string"},
                "details": {"description": "what was wrong, when there is more to say"},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}

DESCRIPTIONS = {
    400: "The request could not be read (a malformed form).",
    401: "No valid credentials.",
    402: "The organization's license is suspended or its budget cannot hold this.",
    403: "Credentials valid, but not allowed here (role, CSRF token, another organization).",
    404: "No such resource.",
    409: (
        "Conflicts with what is stored (a taken slug, an id reused for other content, a sum "
        "that would pass the ledger's int64 bound)."
    ),
    415: "Neither OTLP protobuf nor OTLP JSON, or an unknown Content-Encoding.",
    413: "Request body over the limit (TOKENLEDGER_MAX_BODY_BYTES).",
    422: (
        "Invalid request: parameters or body (also duplicate JSON keys, NaN, bad UTF-8, NUL "
        "in text), including the rules between fields that the schema states in words: a "
        "service key must name the organization, 'to' must be after 'from'."
    ),
    429: "Too many attempts; see Retry-After.",
}

_WRITES = {"post", "put", "patch", "delete"}
# Statuses that only some operations answer, beyond what the rules below give.
_SPECIAL: dict[tuple[str, str], set[int]] = {
    ("post", "/api/auth/token"): {400, 401, 429},
    ("post", "/api/v1/reservations"): {402},
    ("post", "/api/licenses"): {404},  # no such organization
    ("post", "/v1/traces"): {400, 413, 415},
    ("get", "/api/provider-reports/comparison"): {404},  # no such organization
}
# Routes for ingest keys: the usage API and OTLP/HTTP.
_INGEST_PREFIXES = ("/api/v1/", "/v1/")
# OTLP/HTTP's body and answer: a trace export as protobuf or as OTLP JSON.
_OTLP_CONTENT = {
    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object"}},
}
# OTLP/HTTP's error body: a google.rpc.Status (JSON or protobuf, as the request).
_OTLP_STATUS = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
}
_PUBLIC = {("post", "/api/auth/token")}


def _error_statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    statuses = set(_SPECIAL.get((method, path), set()))
    if operation.get("parameters") or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses.add(413)
    if "{" in path:
        statuses.add(404)
    if (method, path) in _PUBLIC:
        return statuses
    if path.startswith(_INGEST_PREFIXES):
        # Ingest keys: unknown key, another organization's, unknown organization,
        # rate limits; writes may conflict with stored ids.
        statuses |= {401, 403, 404, 429}
    elif path.startswith("/api/"):
        statuses |= {401, 403}
    if method in _WRITES and path != "/api/auth/logout":
        statuses.add(409)
    return statuses


def _security(path: str) -> list[dict[str, list[str]]]:
    if path.startswith(_INGEST_PREFIXES):
        return [{"ingestKey": []}]
    return [{"adminToken": []}, {"sessionCookie": []}]


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses with the real body on every operation, and who may call it."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from POST /api/auth/token.",
        },
        "sessionCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": "tl_session",
            "description": "The browser's session; writes also need the X-CSRF-Token header.",
        },
        "ingestKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An ingest key (tl_...) from `tokenledger api-key create`.",
        },
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(method, path, operation)):
                responses[str(status)] = {
                    "description": DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": _ERROR_REF}},
                }
            if (method, path) not in _PUBLIC and path.startswith(("/api/", *_INGEST_PREFIXES)):
                operation["security"] = _security(path)
    otlp = schema.get("paths", {}).get("/v1/traces", {}).get("post")
    if otlp is not None:
        otlp["requestBody"] = {"required": True, "content": _OTLP_CONTENT}
        otlp["responses"]["200"]["content"] = _OTLP_CONTENT
        # An unreadable export is OTLP's 400, not this API's 422.
        otlp["responses"].pop("422", None)
        for status in (400, 413, 415):
            otlp["responses"][str(status)] = {
                "description": "Not a readable OTLP trace export."
                if status == 400
                else DESCRIPTIONS[status],
                "content": _OTLP_STATUS,
            }
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete_schema(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
