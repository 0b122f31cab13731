"""Teli's answer bodies as pydantic models: how :mod:`providers.teli.wire` reads them.

Kept apart from ``wire`` because ``wire`` is compiled (``gateway/_native.py``) and a
pydantic model cannot be: its class is built by pydantic's metaclass at import time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Wire(BaseModel):
    # Strict: a number where Teli documents a string is a misreading, not data.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class AssignedTo(Wire):
    user_id: str
    name: str | None = None


class AssignResponse(Wire):
    success: bool
    thread_id: str
    assigned_to: AssignedTo


class UnassignResponse(Wire):
    success: bool
    thread_id: str


class UsersResponse(Wire):
    # Entries are read one by one in read_users: one odd user must not hide the rest.
    users: list[Any]


class User(Wire):
    unique_id: str
    email: str
    name: str | None = None
    status: str | None = None
