"""In-process buckets: one replica's own state, in a bounded and expiring cache.

Used alone when ``redis_url`` is null, and beside Redis as the fallback (and its
shadow) when it is set. A bucket is one integer (its ``tat``) in a
:class:`cachetools.TLRUCache` whose entries expire once the bucket is full again,
so idle per-path buckets cost nothing and millions of paths cannot grow memory
past ``maxsize`` (the least recently used bucket goes first; an evicted bucket is
full, which is what it would be after a short idle spell anyway).
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import TLRUCache

from gateway.ratelimit import gcra
from gateway.ratelimit.gcra import US, Bucket, Decision

Clock = Callable[[], float]

#: Seconds an entry outlives its bucket's refill, so a just-full bucket is not a miss.
_GRACE_S = 1.0


def _expires(_key: str, tat: int, _now: float) -> float:
    return tat / US + _GRACE_S


class MemoryBackend:
    """Buckets in this process. ``clock`` is in seconds (monotonic or fake)."""

    def __init__(self, clock: Clock, *, maxsize: int = 100_000) -> None:
        self._clock = clock
        self._tats: TLRUCache[str, int] = TLRUCache(maxsize, _expires, timer=clock)

    def __len__(self) -> int:
        return len(self._tats)

    def _now(self) -> int:
        return int(self._clock() * US)

    async def reserve(self, key: str, bucket: Bucket, max_wait_s: float,
                      floor_s: float = 0.0) -> Decision:
        return self.reserve_now(key, bucket, max_wait_s, floor_s)

    def reserve_now(self, key: str, bucket: Bucket, max_wait_s: float,
                    floor_s: float = 0.0) -> Decision:
        """:meth:`reserve` without the coroutine, for callers that must not yield."""
        tat, decision = gcra.reserve(self._tats.get(key), self._now(), bucket,
                                     int(max_wait_s * US), int(floor_s * US))
        if tat is not None:
            self._tats[key] = tat
        return decision

    async def pause(self, key: str, bucket: Bucket, seconds: float) -> None:
        self.pause_now(key, bucket, seconds)

    def pause_now(self, key: str, bucket: Bucket, seconds: float) -> None:
        self._tats[key] = gcra.pause(self._tats.get(key), self._now(), bucket, int(seconds * US))

    async def close(self) -> None:
        return None
