"""The canonical API's bodies, as pydantic models.

They validate requests (unknown fields are refused) and generate the
OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ID = r"^[A-Za-z0-9_.:@+-]{1,128}$"
_TENANT = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _one_of(*fields: str) -> dict[str, Any]:
    # The "exactly one" rule below, written into the published schema too: without
    # it, {"contact": {}} is schema-valid and clients (and fuzzers) cannot tell.
    return {"oneOf": [{"required": [f], "properties": {f: {"type": "string"}}}
                      for f in fields]}


class ContactIn(_In):
    """Exactly one of phone, email or id (the provider's own contact id)."""

    model_config = ConfigDict(json_schema_extra=_one_of("phone", "email", "id"))
    phone: str | None = Field(None, min_length=1, max_length=64, examples=["+15551234567"])
    email: str | None = Field(None, min_length=3, max_length=254)
    id: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactIn:
        # A sum, not a list of the names given: no comprehension (a frame) per request.
        if (self.phone is not None) + (self.email is not None) + (self.id is not None) != 1:
            raise ValueError("give exactly one of phone, email or id")
        return self


class AssigneeIn(_In):
    """Exactly one of email or id (the provider's own user id)."""

    model_config = ConfigDict(json_schema_extra=_one_of("email", "id"))
    email: str | None = Field(None, min_length=3, max_length=254, examples=["jane@acme.com"])
    id: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _exactly_one(self) -> AssigneeIn:
        if (self.email is None) == (self.id is None):
            raise ValueError("give exactly one of email or id")
        return self


class UnassignRequest(_In):
    tenant: str | None = Field(None, pattern=_TENANT)
    contact: ContactIn
    campaign_id: str | None = Field(None, pattern=_ID)
    assigned_by: str | None = Field(None, pattern=_ID)


class AssignRequest(UnassignRequest):
    assignee: AssigneeIn
    mode: Literal["replace", "add"] = "replace"


def _none(v: object) -> bool:
    return v is None


class ContactOut(BaseModel):
    """The contact as the client named it (normalized), and the provider's id for it."""

    phone: str | None = Field(None, exclude_if=_none)
    email: str | None = Field(None, exclude_if=_none)
    id: str | None = Field(None, exclude_if=_none)
    provider_id: str


class AssigneeOut(BaseModel):
    provider_id: str
    name: str | None = Field(None, exclude_if=_none)  # present when the provider reports it


class Result(BaseModel):
    status: Literal["assigned", "unassigned"]
    operation_id: str
    tenant: str
    provider: str
    contact: ContactOut
    assignee: AssigneeOut | None
    attempts: int


class Queued(BaseModel):
    status: Literal["queued"] = "queued"
    operation_id: str


class OperationView(BaseModel):
    operation_id: str
    status: Literal["queued", "running", "succeeded", "failed", "superseded"]
    attempts: int
    created_at: str
    updated_at: str
    result: Result | None = Field(None, exclude_if=_none)
    error: Problem | None = Field(None, exclude_if=_none)


class Problem(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str
    provider: str | None = None
    errors: list[dict[str, str]] | None = None
    retry_after: float | None = None


class CapabilitiesOut(BaseModel):
    unassign: bool
    modes: list[Literal["replace", "add"]]
    contact_kinds: list[Literal["phone", "email", "id"]]
    assignee_kinds: list[Literal["email", "id"]]


class TenantOut(BaseModel):
    name: str
    provider: str
    capabilities: CapabilitiesOut


class TenantList(BaseModel):
    tenants: list[TenantOut]


OperationView.model_rebuild()
