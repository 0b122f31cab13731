"""Aelyst's answer bodies as pydantic models: how :mod:`providers.aelyst.wire` reads them.

Kept apart from ``wire`` because ``wire`` is compiled (``gateway/_native.py``) and a
pydantic model cannot be: its class is built by pydantic's metaclass at import time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictInt


class AssigneeResponse(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    contactId: StrictInt  # Aelyst's own spelling
