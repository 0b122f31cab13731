"""Vambe adapter: contacts and team members are UUIDs; phones and emails go through search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from gateway.errors import AssigneeNotFound, UnsupportedOperation
from gateway.spi import (
    E164,
    AssignCommand,
    AssigneeRef,
    Capabilities,
    ContactRef,
    Email,
    Outcome,
    ProviderContactId,
    ProviderDefaults,
    ProviderUserId,
    RateLimitDefaults,
    UnassignCommand,
    Upstream,
    UpstreamResponse,
)
from providers.vambe import wire

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class VambeAdapter:
    type: ClassVar[str] = "vambe"
    capabilities: ClassVar[Capabilities] = Capabilities(
        unassign=False,  # no unassign or remove-agent endpoint is documented
        modes=("replace", "add"),  # removeExistingAgents=true / false
        contact_kinds=("phone", "email", "id"),
        assignee_kinds=("email", "id"),
        contact_id_pattern=_UUID,
        assignee_id_pattern=_UUID,
        notes=(
            "a phone or email is resolved by contact search; several exact matches "
            "(one per channel) are refused as ambiguous: send contact.id",
        ),
    )
    defaults: ClassVar[ProviderDefaults] = ProviderDefaults(
        base_url="https://api.vambe.me",
        # Undocumented for these endpoints (only the Events API has 1000/h): a guess.
        rate_limit=RateLimitDefaults(rate=10, burst=10, scope="account", max_wait_s=2),
    )

    def __init__(self, name: str, api_key: str) -> None:
        self.name = name
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"VambeAdapter(name={self.name!r})"

    def auth_headers(self) -> Mapping[str, str]:
        return {"x-api-key": self._api_key}

    def rate_feedback(self, response: UpstreamResponse) -> float | None:
        return wire.rate_feedback(response)

    async def assign(self, upstream: Upstream, command: AssignCommand) -> Outcome:
        contact_id = await _contact_id(upstream, command.contact)
        member_id, name = await _member(upstream, command.assignee)
        request = wire.assign_request(contact_id, member_id, command.mode)
        return wire.read_assign(await upstream.send(request), contact_id, member_id, name)

    async def unassign(self, upstream: Upstream, command: UnassignCommand) -> Outcome:
        # Guard only: capabilities say no, so the gateway never calls this.
        raise UnsupportedOperation("Vambe documents no way to unassign a contact")


async def _contact_id(upstream: Upstream, contact: ContactRef) -> ProviderContactId:
    if contact.kind == "id":
        return ProviderContactId(contact.value.lower())
    if contact.kind == "phone":
        phone = E164(contact.value)

        async def by_phone() -> ProviderContactId:
            response = await upstream.send(wire.phone_search_request(phone))
            return wire.read_phone_search(response, phone)

        return await upstream.lookup("vambe.contact_phone", phone, by_phone)
    email = Email(contact.value.strip().lower())

    async def by_email() -> ProviderContactId:
        response = await upstream.send(wire.email_search_request(email))
        return wire.read_email_search(response, email)

    return await upstream.lookup("vambe.contact_email", email, by_email)


async def _member(upstream: Upstream, assignee: AssigneeRef) -> tuple[ProviderUserId, str | None]:
    if assignee.kind == "id":
        # The name would cost a team-member list call; the outcome goes without it.
        return ProviderUserId(assignee.value.lower()), None

    async def load() -> wire.TeamDirectory:
        return wire.read_team_members(await upstream.send(wire.team_members_request()))

    members = await upstream.lookup("vambe.team_members", "all", load)
    found = members.get(assignee.value.strip().lower())
    if found is None:
        raise AssigneeNotFound("Vambe has no team member with this email")
    return found
