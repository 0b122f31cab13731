"""Vambe's answer bodies as pydantic models: how :mod:`providers.vambe.wire` reads them.

Kept apart from ``wire`` because ``wire`` is compiled (``gateway/_native.py``) and a
pydantic model cannot be: its class is built by pydantic's metaclass at import time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Wire(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Contact(Wire):
    id: str
    phone: str | None = None
    email: str | None = None
    platform: str | None = None


class TeamMember(Wire):
    id: str
    email: str | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None

    def display_name(self) -> str | None:
        full = " ".join(p for p in (self.first_name, self.last_name) if p)
        return self.name or full or None


class AssignResponse(Wire):
    success: bool
    message: str | None = None
