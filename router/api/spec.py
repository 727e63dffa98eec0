"""The API's operations as data, and the OpenAPI 3.1 document built from them.

Each endpoint module describes its endpoints as `Operation`s: method, path, scope,
the pydantic models of its query, body and answers. `add_operations` registers the
handlers (behind `scoped` when they need a token) and keeps the descriptions on the
application, and ``GET /openapi.json`` turns them into the document: the handlers
validate with the very models the document shows, so the two cannot drift apart.
`problem` turns a pydantic validation error into the API's one-line message naming
the field (``messages[3].to: required``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from router.api.common import CONTEXT, ApiError, Handler, json_response, scoped
from router.config import Scope, Settings

__all__ = [
    "OPERATIONS",
    "ErrorBody",
    "Operation",
    "Reply",
    "add_operations",
    "openapi_document",
    "problem",
    "validate",
]

M = TypeVar("M", bound=BaseModel)
_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")


class ErrorBody(BaseModel):
    """Every error: one line naming the field or header and what is wrong."""

    model_config = ConfigDict(title="Error")
    error: str


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: a description and the model of its JSON body."""

    description: str
    model: Any = ErrorBody


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint. `handler` None: registered elsewhere, only documented here."""

    method: str
    path: str
    summary: str
    handler: Handler | None
    replies: Mapping[int, Reply]
    scope: Scope | None = None
    query: type[BaseModel] | None = None
    body: Any = None  # a model or a union of models (the request's JSON)
    tag: str = "messages"
    examples: Mapping[str, Any] = field(default_factory=dict)  # request bodies, by name
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness, and what stands in its way."""

    status: Literal["ready", "unready"]
    problems: list[str] = Field(default_factory=list)


OPERATIONS: web.AppKey[list[Operation]] = web.AppKey("operations", list)

# Registered by router/api/app.py itself; documented here with the rest.
_SHARED = [
    Operation("GET", "/healthz", "Liveness", None, {200: Reply("Alive.", Health)}, tag="probes"),
    Operation(
        "GET",
        "/readyz",
        "Readiness: Redis answers and every profile has a bind ready",
        None,
        {200: Reply("Ready.", Readiness), 503: Reply("Not ready, and why.", Readiness)},
        tag="probes",
    ),
    Operation(
        "GET",
        "/openapi.json",
        "This document",
        None,
        {200: Reply("The OpenAPI 3.1 document.", dict[str, Any])},
        tag="probes",
    ),
]


def add_operations(app: web.Application, operations: Sequence[Operation]) -> None:
    """Register the handlers of `operations` and keep them for the document."""
    if OPERATIONS not in app:
        app[OPERATIONS] = list(_SHARED)
        app.router.add_get("/openapi.json", _openapi)
    for op in operations:
        if op.handler is not None:
            handler = scoped(op.scope)(op.handler) if op.scope else op.handler
            app.router.add_route(op.method, op.path, handler)
        app[OPERATIONS].append(op)


def validate(model: type[M], data: Any, where: str = "") -> M:
    """`data` as `model`, or ApiError 400 naming the first bad field (under `where`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, problem(exc, where)) from None


def problem(exc: ValidationError, where: str = "") -> str:
    """The first error of `exc` as ``path: message``, in the words the wire decoder
    uses for the same faults (``required``, ``unknown field``)."""
    first = exc.errors(include_url=False)[0]
    path = where
    for part in first["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    kind = first["type"]
    if kind == "missing":
        message = "required"
    elif kind == "extra_forbidden":
        message = "unknown field"
    else:
        message = first["msg"]
        message = message[:1].lower() + message[1:]
    return f"{path or 'body'}: {message}"


async def _openapi(request: web.Request) -> web.Response:
    operations: list[Operation] = request.app[OPERATIONS]
    return json_response(openapi_document(operations, request.app[CONTEXT].settings))


def openapi_document(operations: Sequence[Operation], settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations` on a router configured by `settings`
    (a ``profile`` parameter lists the configured profiles)."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    profiles = {"type": "string", "enum": sorted(settings.profiles)}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components, profiles)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "sms-router",
            "version": "1",
            "description": "Send SMS and MMS, read the SMS log, inspect profiles and dead letters. "
            'Errors are JSON: {"error": "field: what is wrong"}.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if settings.api.public_url:
        document["servers"] = [{"url": settings.api.public_url.rstrip("/")}]
    return document


def _operation(
    op: Operation, components: dict[str, Any], profiles: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}{_camel(op.path)}",
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": profiles if name == "profile" else {"type": "string"},
        }
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        params += _query_params(op.query)
    for param in params:
        if param["name"] == "profile":
            param["schema"] = profiles
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema = _schema(op.body, "validation", components)
        content: dict[str, Any] = {"schema": schema}
        if op.examples:
            content["examples"] = {k: {"value": v} for k, v in op.examples.items()}
        out["requestBody"] = {"required": True, "content": {"application/json": content}}
    replies = dict(op.replies)
    if op.scope is not None:
        out["security"] = [{"bearer": []}]
        out["description"] = (out.get("description", "") + f"\n\nScope: `{op.scope}`.").strip()
        replies.setdefault(401, Reply("No bearer token, or an unknown one."))
        replies.setdefault(403, Reply(f"The key lacks the `{op.scope}` scope."))
    if op.body is not None:
        replies.setdefault(413, Reply("The body is larger than `api.max_body`."))
    if op.path.startswith("/v1/"):
        replies.setdefault(503, Reply("Redis is unavailable; try again."))
    out["responses"] = {
        str(status): _reply(reply, components) for status, reply in sorted(replies.items())
    }
    out.update(op.extra)
    return out


def _reply(reply: Reply, components: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        schema = _schema(reply.model, "serialization", components)
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _schema(kind: Any, mode: Any, components: dict[str, Any]) -> dict[str, Any]:
    """`kind`'s JSON schema; models go to the components and are referenced."""
    schema: dict[str, Any] = TypeAdapter(kind).json_schema(ref_template=_REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        name = schema.get("title", kind.__name__)
        components[name] = schema
        return {"$ref": _REF.format(model=name)}
    return schema


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = _not_null(dict(prop))
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = prop.pop("description", None)
        prop.pop("title", None)
        if description:
            param["description"] = description
        param["schema"] = prop
        params.append(param)
    return params


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value, never JSON null: drop the null branch."""
    options = prop.get("anyOf")
    if options is not None:
        kept = [o for o in options if o.get("type") != "null"]
        if len(kept) == 1:
            prop.pop("anyOf")
            prop = {**kept[0], **prop}
        else:
            prop["anyOf"] = kept
    if prop.get("default", 0) is None:
        prop.pop("default")
    return prop


def _camel(path: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", path.replace("{", "by_").replace("}", ""))
    return "".join(w[:1].upper() + w[1:] for w in words if w and w != "v1")
