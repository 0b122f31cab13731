"""Rate limits that hold across replicas.

::

    gcra.py           the bucket arithmetic (GCRA with reservations), shared by all
    memory.py         in-process buckets in a bounded, expiring cache
    redis_backend.py  Redis buckets: one atomic script per decision, Redis's clock
    shared.py         Redis with its fallback: the one place Redis failures are decided
    limiter.py        the gate around provider calls, client buckets, feedback
    wiring.py         the limiter built for the app, rate-limit response headers
                      (gateway.app installs it)
"""

from __future__ import annotations

from gateway import _native

_native.activate(__path__, __name__)  # its compiled modules, as the package's

from gateway.ratelimit.gcra import Bucket, Decision  # noqa: E402
from gateway.ratelimit.limiter import Limiter  # noqa: E402
from gateway.ratelimit.wiring import LIMITER, build_limiter, check_client, gate_for  # noqa: E402

__all__ = ["LIMITER", "Bucket", "Decision", "Limiter", "build_limiter", "check_client",
           "gate_for"]
