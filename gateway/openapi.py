"""``GET /openapi.json``: the canonical API, generated from the same pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.errors import ALL_ERRORS
from gateway.metrics import VERSION
from gateway.models import (
    AssignRequest,
    OperationView,
    Problem,
    Queued,
    Result,
    TenantList,
    UnassignRequest,
)

_MODELS: tuple[type[BaseModel], ...] = (
    AssignRequest, UnassignRequest, Result, Queued, OperationView, Problem, TenantList)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problems(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        codes = sorted({e.code for e in ALL_ERRORS if e.status == status})
        out[str(status)] = {
            "description": ", ".join(codes) or "error",
            "content": {"application/problem+json": {"schema": _ref(Problem)}},
        }
    return out


_COMMON = (400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)


def _write_op(summary: str, body: type[BaseModel]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
            {"name": "Prefer", "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["respond-async"]}},
        ],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {"200": _json(Result, "done"), "202": _json(Queued, "queued"),
                      **_problems(*_COMMON)},
    }


def build_openapi() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _MODELS],
                                 ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Assignment gateway", "version": VERSION},
        "paths": {
            "/v1/assign": {"post": _write_op("Assign a conversation", AssignRequest)},
            "/v1/unassign": {"post": _write_op("Unassign a conversation", UnassignRequest)},
            "/v1/operations/{id}": {"get": {
                "summary": "An operation's state", "security": [{"bearer": []}],
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "maxLength": 64}}],
                "responses": {"200": _json(OperationView, "the operation"),
                              **_problems(401, 404)}}},
            "/v1/tenants": {"get": {
                "summary": "Tenants this key may use", "security": [{"bearer": []}],
                "responses": {"200": _json(TenantList, "tenants"), **_problems(401)}}},
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Ready", "responses": {
                "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
