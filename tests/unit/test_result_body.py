"""The 200 body is built as a dict on the request path (gateway.service.result); it must be
exactly what the published ``Result`` model would produce for the same facts."""

from __future__ import annotations

import dataclasses
import itertools

import orjson
import pytest

from gateway.models import ContactOut, Result
from gateway.operations import OpRecord, command_to_dict
from gateway.service import ContactEcho, Plan, result
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

CONTACTS = [ContactEcho(phone="+15551234567"), ContactEcho(email="jane@acme.com"),
            ContactEcho(id="42")]
OUTCOMES = [Outcome(ProviderContactId("c-1")),
            Outcome(ProviderContactId("c-1"), ProviderUserId("u-9")),
            Outcome(ProviderContactId("c-1"), ProviderUserId("u-9"), "Jane Doe")]


@pytest.mark.parametrize(("operation", "contact", "outcome"),
                         list(itertools.product(["assign", "unassign"], CONTACTS, OUTCOMES)))
def test_the_body_is_the_models_dump(operation: str, contact: ContactEcho,
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


@pytest.mark.parametrize(("operation", "contact"),
                         list(itertools.product(["assign", "unassign"], CONTACTS)))
def test_a_stored_record_holds_the_plan_as_asdict_and_the_models_dump(
        operation: str, contact: ContactEcho) -> None:
    """OpRecord.dumps writes the command and the contact as dicts built by hand: the same
    JSON as orjson's dataclass support (byte for byte), asdict and model_dump."""
    tenant = TenantContext("acme", "US", "camp-1", None)
    ref = ContactRef("phone", "+15551234567")
    command = (AssignCommand(tenant, ref, AssigneeRef("email", "a@acme.com"), "replace",
                             None, "bot") if operation == "assign"
               else UnassignCommand(tenant, ref, "camp-2", None))
    plan = Plan(operation, "app", "acme", "teli-main", command, contact)  # type: ignore[arg-type]
    record = OpRecord("op_1", plan, "req-1", 1.0, 2.0)
    stored = orjson.loads(record.dumps())["plan"]
    assert stored["command"] == dataclasses.asdict(command)
    assert orjson.dumps(command_to_dict(command)) == orjson.dumps(command)
    # As ContactOut dumps it (provider_id "" at plan time): what every version read.
    echo = ContactOut(**dataclasses.asdict(contact), provider_id="")
    assert stored["contact"] == echo.model_dump(mode="json")
    assert OpRecord.loads(record.dumps()).plan == plan
