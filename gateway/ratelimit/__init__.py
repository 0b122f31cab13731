"""Rate limits that hold across replicas.

::

    gcra.py           the bucket arithmetic (GCRA with reservations), shared by all
    memory.py         in-process buckets in a bounded, expiring cache
    redis_backend.py  Redis buckets: one atomic script per decision, Redis's clock
    shared.py         Redis with its fallback: the one place Redis failures are decided
    limiter.py        the gate around provider calls, client buckets, feedback
    wiring.py         installation on the app, rate-limit response headers
"""

from __future__ import annotations

from gateway.ratelimit.gcra import Bucket, Decision
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.wiring import LIMITER, check_client, gate_for, setup_ratelimit

__all__ = ["LIMITER", "Bucket", "Decision", "Limiter", "check_client", "gate_for",
           "setup_ratelimit"]
