"""The in-process store's bounded, expiring map (gateway.operations.Expiring)."""

from __future__ import annotations

from gateway.expiring import Expiring


def test_bounded_by_count_oldest_written_first() -> None:
    now = [0.0]
    m: Expiring[int, int] = Expiring(100, 10.0, lambda: now[0])
    for i in range(1000):
        m[i] = i
    assert len(m) == 100 and m.get(999) == 999 and m.get(899) is None
    m[900] = -1  # a rewrite makes it the newest: it outlives older entries
    for i in range(1000, 1099):
        m[i] = i
    assert m.get(900) == -1 and m.get(901) is None


def test_entries_expire_and_stale_ones_are_trimmed_by_writes() -> None:
    now = [0.0]
    m: Expiring[str, int] = Expiring(10_000, 10.0, lambda: now[0])
    for i in range(5000):
        m[f"old{i}"] = i
    now[0] = 10.0
    assert m.get("old4999") is None and "old1" not in m  # stale reads as absent
    for i in range(3000):
        m[f"new{i}"] = i
    # 3000 writes trim up to 6000 stale entries: every old one is gone.
    assert len(m) == 3000 and m.get("new2999") == 2999
    assert m.pop("new0") == 0 and m.get("new0") is None
