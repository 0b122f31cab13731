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

from gateway import _native

_native.activate(__path__, __name__)  # its compiled modules, as the package's

from gateway.ratelimit.gcra import Bucket, Decision  # noqa: E402
from gateway.ratelimit.limiter import Limiter  # noqa: E402
from gateway.ratelimit.wiring import LIMITER, check_client, gate_for, setup_ratelimit  # noqa: E402

__all__ = ["LIMITER", "Bucket", "Decision", "Limiter", "check_client", "gate_for",
           "setup_ratelimit"]
