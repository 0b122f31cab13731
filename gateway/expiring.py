"""A bounded map whose entries expire: O(1) on every write and read."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """A bounded map whose entries expire ``ttl_s`` after they were written.

    Entries are kept in write order (an OrderedDict: O(1) at both ends); past
    ``maxsize`` the oldest goes. Expiry is lazy (a stale entry reads as absent)
    plus a trim of stale entries from the old end every 32 writes, so neither a
    write nor a read ever walks the map.
    """

    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.maxsize, self.ttl_s, self.clock = maxsize, ttl_s, clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._writes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: V | None = None) -> V | None:
        entry = self._data.get(key)
        if entry is None or entry[0] <= self.clock():
            return default
        return entry[1]

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            data.move_to_end(key)
        data[key] = (self.clock() + self.ttl_s, value)
        if len(data) > self.maxsize:
            data.popitem(last=False)
        self._writes += 1
        if not self._writes & 31:
            self._trim()

    def _trim(self) -> None:
        """Drop stale entries from the old end: up to 64 per 32 writes, so they go
        faster than they come and no write pays for more than a few."""
        data, now = self._data, self.clock()
        for _ in range(64):
            if not data or next(iter(data.values()))[0] > now:
                return
            data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def pop(self, key: K) -> V | None:
        entry = self._data.pop(key, None)
        return None if entry is None else entry[1]
