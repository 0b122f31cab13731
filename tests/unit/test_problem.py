"""Retry-After on a refusal: whole seconds, never earlier than the gateway's own wait."""

from __future__ import annotations

import pytest

from gateway.errors import RateLimited
from gateway.http import problem_response


@pytest.mark.parametrize(("wait", "header"), [
    (0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0005, "2"), (1.9999, "2"), (2.0, "2"), (59.1, "60"),
])
def test_retry_after_rounds_up_to_whole_seconds(wait: float, header: str) -> None:
    resp = problem_response(RateLimited("slow down", retry_after=wait), "rid")
    assert resp.headers["Retry-After"] == header
    assert resp.headers["X-Request-ID"] == "rid"
