"""The in-process idempotency store: claims expire on their own clock, answers are kept
a day, only a claim's own nonce finishes or releases it, and the map is bounded."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from gateway import idempotency
from gateway.idempotency import KEEP_S, Entry, MemoryIdempotency


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_claim_holds_until_its_own_expiry_and_an_answer_for_a_day() -> None:
    clock = Clock()
    store = MemoryIdempotency(clock)
    first = Entry("fp", "n1")
    assert await store.claim("k", first, 35.0) is None
    found = await store.claim("k", Entry("fp", "n2"), 35.0)
    assert found is not None and found.nonce == "n1"
    clock.now += 36.0  # the claim's request never finished (a replica killed)
    assert await store.claim("k", Entry("fp", "n3"), 35.0) is None
    done = Entry("fp", "n3", done=True, status=200, body="{}")
    await store.finish("k", done, KEEP_S)
    clock.now += KEEP_S - 1.0
    kept = await store.claim("k", Entry("fp", "n4"), 35.0)
    assert kept is not None and kept.done and kept.status == 200
    clock.now += 2.0
    assert await store.claim("k", Entry("fp", "n5"), 35.0) is None


async def test_only_the_claims_own_nonce_finishes_or_releases_it() -> None:
    store = MemoryIdempotency(Clock())
    await store.claim("k", Entry("fp", "mine"), 35.0)
    await store.release("k", "late")  # an expired claim's request, finishing late
    await store.finish("k", Entry("fp", "late", done=True, status=500), KEEP_S)
    still = await store.claim("k", Entry("fp", "other"), 35.0)
    assert still is not None and still.nonce == "mine" and not still.done
    await store.release("k", "mine")
    assert await store.claim("k", Entry("fp", "other"), 35.0) is None


async def test_the_oldest_keys_go_first_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "MEMORY_KEYS", 3)
    store = MemoryIdempotency(Clock())
    for k in ("a", "b", "c", "d"):
        assert await store.claim(k, Entry("fp", k), 35.0) is None
    assert len(store.entries) == 3
    assert await store.claim("a", Entry("fp", "again"), 35.0) is None  # "a" went
    found = await store.claim("d", Entry("fp", "again"), 35.0)
    assert found is not None and found.nonce == "d"


def test_entry_dumps_as_asdict_and_loads_back() -> None:
    # Entry.dumps builds the dict itself; stored entries must read the same as before.
    for entry in (Entry("fp", "n1"),
                  Entry("fp", "n2", done=True, status=202, headers={"Location": "/v1/x"},
                        body='{"a":1}', problem={"code": "rate_limited"})):
        assert entry.dumps() == orjson.dumps(dataclasses.asdict(entry))
        assert Entry.loads(entry.dumps()) == entry
    assert Entry("fp", "n").headers is not Entry("fp", "n").headers  # no shared default
