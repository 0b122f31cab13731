"""In-process buckets: one replica's own state, bounded and expiring.

Used alone when ``redis_url`` is null, and beside Redis as the fallback (and its
shadow) when it is set. A bucket is one integer (its ``tat``) in a dict kept in
least-recently-written order. An entry whose bucket is full again (``tat`` in
the past) means the same as no entry, so expiry is lazy: idle per-path buckets
are swept only when the dict passes ``maxsize``, and if live buckets alone pass
it the least recently written go first (an evicted bucket is full, which is what
it would be after a short idle spell anyway). Millions of paths cannot grow
memory past ``maxsize``, and a decision is a dict look-up and a store.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.ratelimit import gcra
from gateway.ratelimit.gcra import US, Bucket, Decision

Clock = Callable[[], float]

#: A sweep that leaves more than this share of ``maxsize`` evicts down to it, so the
#: next sweep is that many writes away (sweeps stay amortized O(1) per write).
_LOW_WATER = 0.9


class MemoryBackend:
    """Buckets in this process. ``clock`` is in seconds (monotonic or fake)."""

    def __init__(self, clock: Clock, *, maxsize: int = 100_000) -> None:
        self._clock = clock
        self._maxsize = maxsize
        self._tats: dict[str, int] = {}

    def __len__(self) -> int:
        now = self._now()
        return sum(1 for tat in self._tats.values() if tat > now)

    @property
    def stored(self) -> int:
        """Entries held, live or not (at most ``maxsize``)."""
        return len(self._tats)

    def _now(self) -> int:
        return int(self._clock() * US)

    def _get(self, key: str) -> int | None:
        return self._tats.get(key)  # a tat in the past reads as a full bucket: see gcra

    def _put(self, key: str, tat: int, now: int) -> None:
        tats = self._tats
        tats.pop(key, None)  # re-inserted last: the dict's order is least recently written
        tats[key] = tat
        if len(tats) > self._maxsize:
            self._sweep(now)

    def _sweep(self, now: int) -> None:
        tats = self._tats
        for key in [k for k, tat in tats.items() if tat <= now]:
            del tats[key]
        excess = len(tats) - int(self._maxsize * _LOW_WATER)
        if excess > 0:
            for key in [k for k, _ in zip(tats, range(excess), strict=False)]:
                del tats[key]

    async def reserve(self, key: str, bucket: Bucket, max_wait_s: float,
                      floor_s: float = 0.0) -> Decision:
        return self.reserve_now(key, bucket, max_wait_s, floor_s)

    def reserve_now(self, key: str, bucket: Bucket, max_wait_s: float,
                    floor_s: float = 0.0) -> Decision:
        """:meth:`reserve` without the coroutine, for callers that must not yield."""
        now = int(self._clock() * US)  # _now and _get inlined: every request's path
        tat, decision = gcra.reserve(self._tats.get(key), now, bucket,
                                     int(max_wait_s * US), int(floor_s * US))
        if tat is not None:
            self._put(key, tat, now)
        return decision

    async def pause(self, key: str, bucket: Bucket, seconds: float) -> None:
        self.pause_now(key, bucket, seconds)

    def pause_now(self, key: str, bucket: Bucket, seconds: float) -> None:
        now = self._now()
        self._put(key, gcra.pause(self._get(key), now, bucket, int(seconds * US)), now)

    async def close(self) -> None:
        return None
