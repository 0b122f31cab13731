"""Canonical identifiers: validation and normalization of what clients send.

Phones become E.164 with the tenant's default region (``phonenumbers``);
emails are checked against a deliberately narrow grammar and lower-cased;
provider ids are checked against the pattern the adapter declares. Anything
that could change the shape of an upstream URL (``/``, ``%``, ``?``, ``#``,
control characters, dot segments) is refused here, before any encoding.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from gateway.errors import InvalidRequest
from gateway.spi import E164, Email

_PHONE_CHARS = re.compile(r"^\+?[0-9()\-.\s]{3,32}$")
# Narrower than RFC 5322 on purpose: no quoted local parts, no "/", "%", "?",
# "#", "!" or backticks, so an address can never smuggle path or query syntax.
_EMAIL = re.compile(
    r"^(?!\.)(?!.*\.\.)[A-Za-z0-9._+'-]{1,64}(?<!\.)"
    r"@(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", errors=[{"field": field, "message": message}])


#: Phone spellings whose E.164 form (or refusal) is kept: ``phonenumbers`` takes about
#: 37 us to parse and format one, more than the rest of a request's plan, and the same
#: contacts come back (assign, then unassign, then assign again). Bounded for a client
#: that sends spelling after spelling: about 6 MB each when full of the longest ones
#: (measured with tracemalloc: 360 bytes a phone entry, 375 an email one).
PHONE_CACHE = 16_384
EMAIL_CACHE = 16_384


def normalize_phone(value: str, region: str, field: str = "contact.phone") -> E164:
    """Any common spelling of a phone number, as E.164 (``+15551234567``)."""
    e164, refusal = _e164(value, region)
    if e164 is None:
        raise _invalid(field, refusal)
    return e164


@functools.lru_cache(maxsize=PHONE_CACHE)
def _e164(value: str, region: str) -> tuple[E164 | None, str]:
    """(the E.164 form, "") or (None, why not): a pure function of its arguments, kept."""
    if not _PHONE_CHARS.match(value):
        return None, ("a phone number has digits, spaces, dots, dashes, brackets "
                      "and an optional leading +")
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None, "not a phone number"
    # is_possible, not is_valid: documented examples such as +15551234567 use
    # fictional 555 numbers that the numbering plan marks invalid.
    if not phonenumbers.is_possible_number(parsed):
        return None, f"not a possible phone number in region {region}"
    return E164(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)), ""


def normalize_email(value: str, field: str) -> Email:
    email = _email(value)
    if email is None:
        raise _invalid(field, "not an email address this gateway accepts")
    return email


@functools.lru_cache(maxsize=EMAIL_CACHE)
def _email(value: str) -> Email | None:
    """The address lower-cased, or None when refused; kept, as phones are: the same
    assignees come back on every request (the grammar's look-aheads cost 1.5 us)."""
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        return None
    return Email(value.lower())


#: Adapters' id patterns, compiled once: a handful, fixed by the adapters' code.
_ID_PATTERNS: dict[str, re.Pattern[str]] = {}


def check_provider_id(value: str, pattern: str, field: str, provider_type: str) -> str:
    """A provider's own id, checked against the format the adapter declares."""
    compiled = _ID_PATTERNS.get(pattern)
    if compiled is None:
        compiled = _ID_PATTERNS[pattern] = re.compile(pattern)
    if not compiled.fullmatch(value) or value.strip(".") == "":
        raise _invalid(field, f"not a {provider_type} id")
    return value
