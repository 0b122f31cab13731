"""The 200 body is built as a dict on the request path (gateway.service.result); it must be
exactly what the published ``Result`` model would produce for the same facts."""

from __future__ import annotations

import itertools

import pytest

from gateway.models import ContactOut, Result
from gateway.service import Plan, result
from gateway.spi import (
    AssignCommand,
    AssigneeRef,
    ContactRef,
    Outcome,
    ProviderContactId,
    ProviderUserId,
    TenantContext,
    UnassignCommand,
)

CONTACTS = [ContactOut(phone="+15551234567", provider_id=""),
            ContactOut(email="jane@acme.com", provider_id=""), ContactOut(id="42", provider_id="")]
OUTCOMES = [Outcome(ProviderContactId("c-1")),
            Outcome(ProviderContactId("c-1"), ProviderUserId("u-9")),
            Outcome(ProviderContactId("c-1"), ProviderUserId("u-9"), "Jane Doe")]


@pytest.mark.parametrize(("operation", "contact", "outcome"),
                         list(itertools.product(["assign", "unassign"], CONTACTS, OUTCOMES)))
def test_the_body_is_the_models_dump(operation: str, contact: ContactOut,
                                     outcome: Outcome) -> None:
    tenant = TenantContext("acme", "US")
    ref = ContactRef("id", "42")
    command = (AssignCommand(tenant, ref, AssigneeRef("id", "u-9")) if operation == "assign"
               else UnassignCommand(tenant, ref))
    plan = Plan(operation, "app", "acme", "teli-main", command, contact)  # type: ignore[arg-type]
    done = result(plan, "teli", outcome, "op_1", 2)
    model = Result.model_validate(done.body)
    assert model.model_dump(mode="json") == done.body
    assert (done.operation_id, done.attempts) == ("op_1", 2)
    assert done.body["contact"]["provider_id"] == "c-1"
    if operation == "unassign" or outcome.assignee_provider_id is None:
        assert done.body["assignee"] is None
