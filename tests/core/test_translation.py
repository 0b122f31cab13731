"""Identifier normalization and the translation cache (coalescing, negative caching)."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

import pytest

from gateway import identifiers
from gateway.errors import AssigneeNotFound, InvalidRequest, UpstreamServerError
from gateway.identifiers import check_provider_id, normalize_email, normalize_phone
from gateway.spi import encode_path
from gateway.upstream import LookupCache, NullObserver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An UpstreamObserver (a protocol: the compiled NullObserver takes no subclass)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def exchange(self, provider: str, operation: str, status: str, seconds: float) -> None:
        return None

    def cache(self, kind: str, result: str) -> None:
        self.seen.append((kind, result))


@pytest.mark.parametrize(("raw", "region", "e164"), [
    ("+1 (555) 123-4567", "US", "+15551234567"),
    ("555.123.4567", "US", "+15551234567"),
    ("+56 9 1234 5678", "US", "+56912345678"),
    ("9 1234 5678", "CL", "+56912345678"),
    ("+60121233112", "GB", "+60121233112"),
])
def test_phones_become_e164(raw: str, region: str, e164: str) -> None:
    assert normalize_phone(raw, region) == e164


@pytest.mark.parametrize("raw", ["call me", "1-800-FLOWERS", "+1 555 ../", "12", "+",
                                 "+1555123456789012345", "555\r\n1234"])
def test_bad_phones_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        normalize_phone(raw, "US")


def test_phone_spellings_are_kept_and_each_answers_as_the_first_time() -> None:
    """The E.164 form of a spelling is parsed once: phonenumbers is the dearest step of
    a plan. A refusal kept reads as the first one did, with the field of its caller."""
    identifiers._e164.cache_clear()
    with patch.object(identifiers.phonenumbers, "parse",
                      wraps=identifiers.phonenumbers.parse) as parse:
        for _ in range(3):
            assert normalize_phone("+1 (555) 123-4567", "US") == "+15551234567"
            assert normalize_phone("9 1234 5678", "CL") == "+56912345678"  # region: in the key
        assert parse.call_count == 2
        errors = []
        for field in ("contact.phone", "x.phone"):
            with pytest.raises(InvalidRequest) as e:
                normalize_phone("+1555123456789012345", "US", field)
            errors.append(e.value.problem()["errors"])
        assert parse.call_count == 3
    assert errors == [[{"field": "contact.phone", "message": "not a phone number"}],
                      [{"field": "x.phone", "message": "not a phone number"}]]
    assert identifiers._e164.cache_info().maxsize == identifiers.PHONE_CACHE  # bounded


def test_email_spellings_are_kept_and_each_answers_as_the_first_time() -> None:
    identifiers._email.cache_clear()
    for _ in range(3):
        assert normalize_email(" Jane@Acme.COM ", "assignee.email") == "jane@acme.com"
    info = identifiers._email.cache_info()
    assert (info.misses, info.hits, info.maxsize) == (1, 2, identifiers.EMAIL_CACHE)
    for field in ("contact.email", "assignee.email"):
        with pytest.raises(InvalidRequest) as e:
            normalize_email("a/b@acme.com", field)
        assert e.value.problem()["errors"] == [
            {"field": field, "message": "not an email address this gateway accepts"}]


def test_emails() -> None:
    assert normalize_email(" Jane.Doe+x@Acme.COM ", "f") == "jane.doe+x@acme.com"
    for bad in ("a/b@x.com", "a@x", "a..b@x.com", ".a@x.com", "a@x.com/..", "a%2f@x.com",
                "a@x.com?q", "a b@x.com", "a@-x.com"):
        with pytest.raises(InvalidRequest):
            normalize_email(bad, "f")


def test_provider_ids_and_paths() -> None:
    assert check_provider_id("17", r"[0-9]{1,18}", "f", "aelyst") == "17"
    with pytest.raises(InvalidRequest):
        check_provider_id("17/../x", r"[0-9]{1,18}", "f", "aelyst")
    assert encode_path("contact", "phone:+1555", "x") == "/contact/phone:%2B1555/x"
    assert encode_path("a", "b/c?d#e") == "/a/b%2Fc%3Fd%23e"
    for bad in ("..", ".", "", "a\nb"):
        with pytest.raises(InvalidRequest):
            encode_path("contact", bad)


async def test_concurrent_lookups_share_one_load() -> None:
    cache, calls = LookupCache(clock=Clock()), 0
    gate = asyncio.Event()

    async def load() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "user_1"

    obs = Recorder()
    tasks = [asyncio.create_task(cache.get("users", "org", load, obs)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*tasks)) == {"user_1"}
    assert calls == 1
    assert obs.seen.count(("users", "miss")) == 1


async def test_not_found_is_cached_briefly_and_errors_are_not() -> None:
    clock = Clock()
    cache = LookupCache(clock=clock, negative_ttl_s=30)
    calls: list[str] = []

    async def missing() -> Any:
        calls.append("missing")
        raise AssigneeNotFound("no such user")

    for _ in range(3):
        with pytest.raises(AssigneeNotFound):
            await cache.get("users", "a@b.co", missing, NullObserver())
    assert calls == ["missing"]
    clock.now += 31
    with pytest.raises(AssigneeNotFound):
        await cache.get("users", "a@b.co", missing, NullObserver())
    assert calls == ["missing", "missing"]

    async def failing() -> Any:
        calls.append("failing")
        raise UpstreamServerError("5xx")

    for _ in range(2):
        with pytest.raises(UpstreamServerError):
            await cache.get("users", "org", failing, NullObserver())
    assert calls.count("failing") == 2


async def test_hits_expire() -> None:
    clock = Clock()
    cache = LookupCache(clock=clock, ttl_s=300)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert await cache.get("k", "x", load, NullObserver()) == 1
    assert await cache.get("k", "x", load, NullObserver()) == 1
    clock.now += 301
    assert await cache.get("k", "x", load, NullObserver()) == 2
