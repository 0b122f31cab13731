"""What each provider's sandbox holds, in canonical terms, for the contract suite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    type: str
    tenant: str
    contact: dict[str, str]          # as a client may write it (not E.164)
    contact_provider_id: str
    assignee_email: str
    assignee_id: str                 # the provider's own user id for assignee_email
    assignee_name: str | None        # what the result reports for an email assignee
    other_assignee_id: str
    missing_contact: dict[str, str]
    missing_assignee_email: str
    direct_contact: dict[str, str]   # a contact needing no look-up
    assign_path: str                 # raw upstream path of an assign for direct_contact
    assigned: Callable[[Any], Any]   # sandbox state -> who holds contact (set of ids)
    unassign: bool


def _teli_assigned(state: Any) -> set[str]:
    uid = state["threads"]["+15551234567_camp_abc123"]["assigned_user_id"]
    return {uid} if uid else set()


def _vambe_assigned(state: Any) -> set[str]:
    return set(state["contacts"]["22222222-2222-4222-8222-000000000001"]["agents"])


def _aelyst_assigned(state: Any) -> set[str]:
    uid = state["contacts"]["3"]["assignee"]
    return {str(uid)} if uid is not None else set()


CASES = {
    "teli": Case(
        type="teli", tenant="t-teli", contact={"phone": "(555) 123-4567"},
        contact_provider_id="+15551234567_camp_abc123",
        assignee_email="Jane@Acme.com", assignee_id="user_xyz789", assignee_name="Jane Smith",
        other_assignee_id="1763661807373x532913854895880007",
        missing_contact={"phone": "+15559999999"}, missing_assignee_email="nobody@acme.com",
        direct_contact={"phone": "+15551234567"}, assign_path="/v1/threads/assign",
        assigned=_teli_assigned, unassign=True,
    ),
    "vambe": Case(
        type="vambe", tenant="t-vambe", contact={"phone": "+56 9 1234 5678"},
        contact_provider_id="22222222-2222-4222-8222-000000000001",
        assignee_email="jane@acme.com", assignee_id="11111111-1111-4111-8111-000000000001",
        assignee_name="Jane Smith", other_assignee_id="11111111-1111-4111-8111-000000000002",
        missing_contact={"phone": "+56900000000"}, missing_assignee_email="nobody@acme.com",
        direct_contact={"id": "22222222-2222-4222-8222-000000000001"},
        assign_path="/api/public/contact/22222222-2222-4222-8222-000000000001/"
                    "assign-team-member/11111111-1111-4111-8111-000000000001",
        assigned=_vambe_assigned, unassign=False,
    ),
    "aelyst": Case(
        type="aelyst", tenant="t-aelyst", contact={"phone": "555.765.4321"},
        contact_provider_id="3",
        assignee_email="jane@acme.com", assignee_id="17", assignee_name=None,
        other_assignee_id="18",
        missing_contact={"phone": "+15559999999"}, missing_assignee_email="nobody@acme.com",
        direct_contact={"id": "3"}, assign_path="/v1/contact/id:3/conversation/assignee",
        assigned=_aelyst_assigned, unassign=True,
    ),
}
