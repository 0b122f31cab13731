"""Canonical identifiers: validation and normalization of what clients send.

Phones become E.164 with the tenant's default region (``phonenumbers``);
emails are checked against a deliberately narrow grammar and lower-cased;
provider ids are checked against the pattern the adapter declares. Anything
that could change the shape of an upstream URL (``/``, ``%``, ``?``, ``#``,
control characters, dot segments) is refused here, before any encoding.
"""

from __future__ import annotations

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


def normalize_phone(value: str, region: str, field: str = "contact.phone") -> E164:
    """Any common spelling of a phone number, as E.164 (``+15551234567``)."""
    if not _PHONE_CHARS.match(value):
        raise _invalid(field, "a phone number has digits, spaces, dots, dashes, brackets "
                       "and an optional leading +")
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise _invalid(field, "not a phone number") from None
    # is_possible, not is_valid: documented examples such as +15551234567 use
    # fictional 555 numbers that the numbering plan marks invalid.
    if not phonenumbers.is_possible_number(parsed):
        raise _invalid(field, f"not a possible phone number in region {region}")
    return E164(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_email(value: str, field: str) -> Email:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise _invalid(field, "not an email address this gateway accepts")
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
