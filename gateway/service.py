"""From a validated canonical request to a provider call and back.

:func:`plan` turns a request into a :class:`Plan`: the tenant resolved and
authorized, the provider's capabilities checked, identifiers normalized and
directory overrides applied. Nothing is sent before a plan exists, so every
refusal here costs the provider nothing. :func:`execute` runs a plan's
command through its adapter within a deadline and shapes the canonical result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from gateway.auth import check_tenant
from gateway.config import ClientSpec, Config
from gateway.errors import (
    InvalidRequest,
    ProviderError,
    UnknownTenant,
    UnsupportedOperation,
    UntranslatableIdentifier,
)
from gateway.identifiers import check_provider_id, normalize_email, normalize_phone
from gateway.models import (
    AssigneeIn,
    AssignRequest,
    ContactIn,
    UnassignRequest,
)
from gateway.spi import (
    AssignCommand,
    AssigneeRef,
    Capabilities,
    ContactRef,
    Operation,
    Outcome,
    TenantContext,
    UnassignCommand,
    Upstream,
)
from gateway.upstream import ProviderClient


@dataclass(init=False, unsafe_hash=True)
class ContactEcho:
    """The contact as the client named it, normalized: one of the three is set. It is
    echoed in the result (``ContactOut`` with the provider's id); a plain value, since
    a pydantic model built per request cost more than the rest of the plan."""

    phone: Final[str | None]
    email: Final[str | None]
    id: Final[str | None]

    def __init__(self, phone: str | None = None, email: str | None = None,
                 id: str | None = None) -> None:
        self.phone = phone
        self.email = email
        self.id = id


@dataclass(init=False, unsafe_hash=True)
class Plan:
    """A request the gateway has accepted for a provider, ready to run (or queue)."""

    operation: Final[Operation]
    client: Final[str]
    tenant: Final[str]
    provider: Final[str]  # configured provider name
    command: Final[AssignCommand | UnassignCommand]
    contact: Final[ContactEcho]  # the canonical contact, echoed in the result

    def __init__(self, operation: Operation, client: str, tenant: str, provider: str,
                 command: AssignCommand | UnassignCommand, contact: ContactEcho) -> None:
        self.operation = operation
        self.client = client
        self.tenant = tenant
        self.provider = provider
        self.command = command
        self.contact = contact


def resolve_tenant(config: Config, client: ClientSpec, requested: str | None) -> str:
    if requested is None:
        if len(client.tenants) != 1:
            raise InvalidRequest("tenant: required, this client key serves several tenants",
                                 errors=[{"field": "tenant", "message": "required"}])
        return client.tenants[0]
    if requested not in config.tenants:
        raise UnknownTenant("no such tenant")
    check_tenant(client, requested)
    return requested


def _check_capabilities(caps: Capabilities, provider_type: str, operation: Operation,
                        body: UnassignRequest) -> None:
    if operation == "unassign" and not caps.unassign:
        raise UnsupportedOperation(
            f"{provider_type} cannot unassign; it can: assign with modes "
            f"{', '.join(caps.modes)}", provider=provider_type,
            extra={"capabilities": caps.public()})
    if isinstance(body, AssignRequest) and body.mode not in caps.modes:
        raise UnsupportedOperation(
            f"{provider_type} supports mode {' or '.join(caps.modes)}, not {body.mode}",
            provider=provider_type, extra={"capabilities": caps.public()})


def _contact(c: ContactIn, default_region: str, caps: Capabilities,
             provider_type: str) -> tuple[ContactRef, ContactEcho]:
    # Each field read once: a read of a pydantic model's field goes through its
    # __getattr__ hook.
    raw_phone, raw_email = c.phone, c.email
    kind = "phone" if raw_phone is not None else "email" if raw_email is not None else "id"
    if kind not in caps.contact_kinds:
        raise UntranslatableIdentifier(
            f"a contact {kind} cannot reach {provider_type}; it takes "
            f"{', '.join(caps.contact_kinds)}", provider=provider_type)
    if raw_phone is not None:
        phone = normalize_phone(raw_phone, default_region)
        return ContactRef("phone", phone), ContactEcho(phone=phone)
    if raw_email is not None:
        email = normalize_email(raw_email, "contact.email")
        return ContactRef("email", email), ContactEcho(email=email)
    raw_id = c.id
    assert raw_id is not None
    cid = check_provider_id(raw_id, caps.contact_id_pattern, "contact.id", provider_type)
    return ContactRef("id", cid), ContactEcho(id=cid)


def _assignee(a: AssigneeIn, caps: Capabilities, provider_type: str, provider: str,
              directory: Mapping[str, Mapping[str, str]]) -> AssigneeRef:
    raw_email = a.email  # read once, as in _contact
    if raw_email is not None:
        email = normalize_email(raw_email, "assignee.email")
        override = directory.get(email, {}).get(provider)
        if override is not None:
            # The platform team's directory answers before any provider look-up. Not
            # checked here: gateway.config refuses an entry that is not the provider's
            # id, a fault of the file that would otherwise be blamed on the client.
            return AssigneeRef("id", override)
        if "email" in caps.assignee_kinds:
            return AssigneeRef("email", email)
        raise UntranslatableIdentifier(
            f"an assignee email cannot reach {provider_type} without a directory entry",
            provider=provider_type)
    raw_id = a.id
    assert raw_id is not None
    if "id" not in caps.assignee_kinds:
        raise UntranslatableIdentifier(f"an assignee id cannot reach {provider_type}",
                                       provider=provider_type)
    return AssigneeRef("id", check_provider_id(raw_id, caps.assignee_id_pattern,
                                               "assignee.id", provider_type))


@dataclass(init=False)
class Route:
    """A tenant as :func:`plan` reads it on every request, built once per configuration
    (:func:`routes`): native attributes (compiled, gateway/_native.py), where each read
    of the configuration's pydantic models goes through their ``__getattr__`` hook."""

    tenant: Final[TenantContext]  # what its adapters may know: one object for every request
    client: Final[ProviderClient]

    def __init__(self, tenant: TenantContext, client: ProviderClient) -> None:
        self.tenant = tenant
        self.client = client


def routes(config: Config, providers: Mapping[str, ProviderClient]) -> dict[str, Route]:
    """Each tenant's :class:`Route`, for the tenants whose provider is in ``providers``."""
    return {name: Route(TenantContext(name, t.default_region, t.campaign_id,
                                      t.organization_id), providers[t.provider])
            for name, t in config.tenants.items() if t.provider in providers}


def plan(config: Config, routes: Mapping[str, Route], client: ClientSpec,
         operation: Operation, body: UnassignRequest) -> Plan:
    """Validate and translate; raises a RequestError before anything is sent."""
    tenant_name = resolve_tenant(config, client, body.tenant)
    route = routes[tenant_name]
    pc, ctx = route.client, route.tenant
    caps, ptype = pc.adapter.capabilities, pc.type
    _check_capabilities(caps, ptype, operation, body)
    contact, echo = _contact(body.contact, ctx.default_region, caps, ptype)
    campaign = body.campaign_id or ctx.campaign_id
    command: AssignCommand | UnassignCommand
    if isinstance(body, AssignRequest):
        assignee = _assignee(body.assignee, caps, ptype, pc.name, config.directory)
        command = AssignCommand(ctx, contact, assignee, body.mode, campaign, body.assigned_by)
    else:
        command = UnassignCommand(ctx, contact, campaign, body.assigned_by)
    return Plan(operation, client.name, tenant_name, pc.name, command, echo)


def run_command(pc: ProviderClient, call: Upstream,
                command: AssignCommand | UnassignCommand) -> Awaitable[Outcome]:
    """The adapter's run of ``command`` (to await); its errors come out unlabelled."""
    if isinstance(command, AssignCommand):
        return pc.adapter.assign(call, command)
    return pc.adapter.unassign(call, command)


async def attempt(plan: Plan, pc: ProviderClient, call: Upstream) -> Outcome:
    """One run of the adapter; provider errors come out labelled with the provider type."""
    try:
        return await run_command(pc, call, plan.command)
    except ProviderError as e:
        e.provider = pc.type
        raise


@dataclass(init=False, unsafe_hash=True)
class Done:
    """A succeeded operation's answer: ``body`` is its :class:`Result` as JSON, built
    directly (the request path would otherwise build the model and dump it twice;
    ``tests/unit/test_result_body.py`` holds the two to the same output)."""

    body: Final[dict[str, Any]]

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    @property
    def operation_id(self) -> str:
        return cast(str, self.body["operation_id"])

    @property
    def attempts(self) -> int:
        return cast(int, self.body["attempts"])


def contact_dict(c: ContactEcho, provider_id: str | None) -> dict[str, Any]:
    """``ContactOut``'s JSON for ``c`` and ``provider_id``, built directly (None: the
    contact alone, as a dry run shows it)."""
    out: dict[str, Any] = {k: v for k, v in (("phone", c.phone), ("email", c.email),
                                              ("id", c.id)) if v is not None}
    if provider_id is not None:
        out["provider_id"] = provider_id
    return out


def result(plan: Plan, provider_type: str, outcome: Outcome, operation_id: str,
           attempts: int) -> Done:
    contact = contact_dict(plan.contact, outcome.contact_provider_id)
    assignee: dict[str, Any] | None = None
    if plan.operation == "assign" and outcome.assignee_provider_id is not None:
        assignee = {"provider_id": outcome.assignee_provider_id}
        if outcome.assignee_name is not None:
            assignee["name"] = outcome.assignee_name
    return Done({
        "status": "assigned" if plan.operation == "assign" else "unassigned",
        "operation_id": operation_id, "tenant": plan.tenant, "provider": provider_type,
        "contact": contact, "assignee": assignee, "attempts": attempts,
    })
