"""The retry and operations suites run every test on both operation stores."""

from __future__ import annotations

import pytest

from tests.retry.helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def redis_url(request: pytest.FixtureRequest) -> str | None:
    """None (in-process) or a real redis-server's URL: every suite runs on both."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("redis_server").url)
