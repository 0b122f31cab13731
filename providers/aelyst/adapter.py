"""Aelyst adapter: one endpoint assigns and unassigns, addressing the contact directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from gateway.errors import UnsupportedOperation
from gateway.spi import (
    AssignCommand,
    Capabilities,
    Outcome,
    ProviderDefaults,
    RateLimitDefaults,
    RetryDefaults,
    UnassignCommand,
    Upstream,
    UpstreamResponse,
)
from providers.aelyst import wire


class AelystAdapter:
    type: ClassVar[str] = "aelyst"
    capabilities: ClassVar[Capabilities] = Capabilities(
        unassign=True,  # {"assignee": null}
        modes=("replace",),  # a conversation has one assignee
        contact_kinds=("phone", "email", "id"),  # all three go straight into the path
        assignee_kinds=("email", "id"),  # Aelyst takes either in the body: no lookup
        # Ids are positive integers (id:123): "0" is no contact and Aelyst answers
        # 400, and "007" would name contact 7 under another spelling.
        contact_id_pattern=r"[1-9][0-9]{0,17}",
        assignee_id_pattern=r"[1-9][0-9]{0,17}",
        notes=(
            "Aelyst answers 449 while a contact is queued; the gateway retries for "
            "minutes and may answer 202 with an operation to poll",
            "Aelyst's answer names no user: an assignee sent by email comes back with "
            "that email as assignee.provider_id",
        ),
    )
    defaults: ClassVar[ProviderDefaults] = ProviderDefaults(
        base_url="https://api.aelyst.ai/v1",
        timeout_s=5.0,
        # Documented: 5 req/s per method + path; burst 1 keeps any sliding 1 s window at 5.
        rate_limit=RateLimitDefaults(rate=5, burst=1, scope="path", max_wait_s=2),
        # 449 asks for "a few minutes": back off from 30 s and give up after 30 min.
        retry=RetryDefaults(max_attempts=6, queued_backoff_s=30, give_up_after_s=1800),
    )

    def __init__(self, name: str, api_key: str) -> None:
        self.name = name
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"AelystAdapter(name={self.name!r})"

    def auth_headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    def rate_feedback(self, response: UpstreamResponse) -> float | None:
        return wire.rate_feedback(response)

    async def assign(self, upstream: Upstream, command: AssignCommand) -> Outcome:
        if command.mode != "replace":
            raise UnsupportedOperation("Aelyst conversations have one assignee: use mode replace")
        request = wire.assignee_request(command.contact, command.assignee)
        return wire.read_assignee(await upstream.send(request), command.assignee)

    async def unassign(self, upstream: Upstream, command: UnassignCommand) -> Outcome:
        request = wire.assignee_request(command.contact, None)
        return wire.read_assignee(await upstream.send(request), None)
