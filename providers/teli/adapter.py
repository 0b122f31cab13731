"""Teli adapter: a thread is one phone in one campaign, with a single assignee."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from gateway.errors import (
    AssigneeNotFound,
    InvalidRequest,
    UnsupportedOperation,
    UntranslatableIdentifier,
)
from gateway.spi import (
    E164,
    AssignCommand,
    AssigneeRef,
    Capabilities,
    ContactRef,
    Outcome,
    ProviderDefaults,
    ProviderUserId,
    RateLimitDefaults,
    RetryDefaults,
    TenantContext,
    UnassignCommand,
    Upstream,
    UpstreamResponse,
)
from providers.teli import wire


class TeliAdapter:
    type: ClassVar[str] = "teli"
    capabilities: ClassVar[Capabilities] = Capabilities(
        unassign=True,
        modes=("replace",),  # a thread has a single assignee
        contact_kinds=("phone",),  # a thread is phone + campaign; Teli has no contact id of its own
        assignee_kinds=("email", "id"),
        # Documented unique_ids look like 1763661807373x532913854895880007, but the
        # docs' own examples use user_xyz789: accept both shapes.
        assignee_id_pattern=r"[A-Za-z0-9_-]{1,64}",
        notes=(
            "assign stops the AI and drip messages and marks the lead qualified",
            "unassign does not undo that: the thread stays completed",
        ),
    )
    defaults: ClassVar[ProviderDefaults] = ProviderDefaults(
        base_url="https://partner.teli.ai/api/proxy",
        timeout_s=5.0,
        # Teli documents no rate limit: a conservative guess, overridable in config.
        rate_limit=RateLimitDefaults(rate=10, burst=10, scope="account", max_wait_s=2),
        retry=RetryDefaults(),
    )

    def __init__(self, name: str, api_key: str) -> None:
        self.name = name
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"TeliAdapter(name={self.name!r})"

    def auth_headers(self) -> Mapping[str, str]:
        return {"X-API-Key": self._api_key}

    def rate_feedback(self, response: UpstreamResponse) -> float | None:
        return wire.rate_feedback(response)

    async def assign(self, upstream: Upstream, command: AssignCommand) -> Outcome:
        if command.mode != "replace":
            raise UnsupportedOperation("Teli threads have a single assignee: use mode replace")
        campaign_id = _campaign(command.campaign_id)
        phone = _phone(command.contact)
        user_id = await _user_id(upstream, command.tenant, command.assignee)
        request = wire.assign_request(
            campaign_id, phone, user_id, command.tenant.organization_id, command.assigned_by
        )
        return wire.read_assign(await upstream.send(request))

    async def unassign(self, upstream: Upstream, command: UnassignCommand) -> Outcome:
        request = wire.unassign_request(_campaign(command.campaign_id), _phone(command.contact))
        return wire.read_unassign(await upstream.send(request))


def _campaign(campaign_id: str | None) -> str:
    if not campaign_id:
        message = "required: the tenant's provider (Teli) keys threads by phone and campaign"
        raise InvalidRequest(
            "campaign_id is required", errors=[{"field": "campaign_id", "message": message}]
        )
    return campaign_id


def _phone(contact: ContactRef) -> E164:
    # Guard only: the gateway checks contact_kinds before calling.
    if contact.kind != "phone":
        raise UntranslatableIdentifier("Teli reaches a thread only by phone and campaign")
    return E164(contact.value)


async def _user_id(
    upstream: Upstream, tenant: TenantContext, assignee: AssigneeRef
) -> ProviderUserId:
    if assignee.kind == "id":
        return ProviderUserId(assignee.value)
    org_id = tenant.organization_id
    if not org_id:
        # The same email exists once per organization, each copy with its own unique_id.
        raise UntranslatableIdentifier(
            "Teli resolves assignee emails per organization; "
            "set the tenant's organization_id or send assignee.id"
        )

    async def load() -> wire.UserDirectory:
        return wire.read_users(await upstream.send(wire.users_request(org_id)))

    users = await upstream.lookup("teli.users", org_id, load)
    found = users.get(assignee.value.strip().lower())
    if found is None:
        raise AssigneeNotFound("Teli has no active user with this email in the organization")
    return found[0]
