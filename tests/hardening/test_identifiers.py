"""Hostile identifiers: every contact and assignee kind, on every provider.

Each corpus entry goes into each identifier field of an otherwise valid
request. Every request must be refused before anything is sent
(``invalid_request``, or ``untranslatable_identifier`` for a kind the provider
does not take) or reach exactly the documented upstream path on the
provider's own sandbox, carrying exactly the normalized identifier; the
sandbox journals prove it. The gateway's own count of upstream exchanges must
equal what the journals saw: nothing went anywhere else.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Sandbox
from tests.hardening.conftest import clear_journal
from tests.hardening.support import PROVIDERS, TENANT, auth, conforms, count, path_problems

_UUID1 = "22222222-2222-4222-8222-000000000001"
_MEMBER1 = "11111111-1111-4111-8111-000000000001"

#: Identifiers of every hostile family the issue names, and a few legitimate
#: but unusual ones that must pass through exactly (case, "+", "'", spaces).
CORPUS: list[str] = [
    # dot segments, raw and encoded, in every spelling a URL library may normalize
    "..", ".", "../../admin", "../", "./x", "a/../../admin", "..%2f..%2fadmin", "%2e%2e",
    "%2e%2e%2fadmin", "%2E%2E/admin", ".%2e/x", "%252e%252e%252f", "..\\..\\admin",
    "\uff0e\uff0e\uff0fadmin", "\u2025/admin", "%c0%ae%c0%ae/",
    # separators and delimiters
    "a/b", "a%2Fb", "a%2fb", "/admin", "//evil.example/x", "a?b=1", "a?", "?x=1&y=2",
    "a#frag", "#", "a;b=1", "a&b=1", "a=b", "a b", "a+b", "a%20b", "%", "%%", "%25", "%zz",
    "a\\b", "http://127.0.0.1:1/x", "https://evil.example/", "a:b", "id:17", "phone:+1",
    "email:a@b.co/../x",
    # userinfo / host confusion
    "a@evil.example", "@evil.example", "user@evil.example/admin", "jane@acme.com@evil.example",
    "jane@acme.com/../../admin", "jane@acme.com?x=1", "jane@acme.com#x", "jane%40acme.com",
    "jane@acme.com%2F..", "a/b@acme.com", "a%2fb@acme.com", "a?b@acme.com", "a#b@acme.com",
    "a..b@acme.com", ".a@acme.com", "a.@acme.com", "a@acme..com", "a@[127.0.0.1]",
    '"a/b"@acme.com', "a@acme.com.", "a@-acme.com", "a@localhost",
    # control characters, CR/LF (header injection), NUL
    "a\r\nX-Injected: 1", "17\r\n", "a\nb", "a\rb", "a\x00b", "\x00", "17\x00", "a\tb",
    "a\x7fb", "a\x1b[31m",
    # over-long
    "1" * 19, "1" * 300, "a" * 129, "a" * 255 + "@acme.com", "x" * 64 + "@" + "y" * 250 + ".com",
    "+" + "1" * 40,
    # Unicode look-alikes and invisible characters
    "j\u0430ne@acme.com", "ja\u200bne@acme.com", "jane@acme.com\u202e", "jane@\u0430cme.com",
    "\uff11\uff17", "\u0661\u0667", "1\u00b2", "\u2160", "17\u0301", "+\uff11555\uff11234567",
    "jane@acme\u3002com", "ﬁ@acme.com",
    # numbers with letters, signs and notations
    "17x", "x17", "0x11", "1e3", "-17", "+17", "17.0", "1_7", "0", "007", " 17 ", "17 ",
    "+1 555 123 4567 ext 9", "+1555123456x", "+1-555-CALL-NOW", "tel:+15551234567",
    "+15551234567/../../admin", "+1 555 123 4567?x", "+1555123#4567", "+1(555)%2F1234567",
    # ids with path tricks
    f"{_UUID1}/../x", f"{_UUID1}%2F..", f"{_UUID1}?x", f"{_UUID1}\n", f"{_UUID1}#",
    f"../{_UUID1}", _UUID1.replace("-", "/"), _UUID1.upper(), "user_xyz789/../../admin",
    # injection strings of other languages
    "${jndi:ldap://127.0.0.1/a}", "' OR 1=1--", "<script>alert(1)</script>", "{{7*7}}",
    # legitimate, unusual: must arrive exactly as normalized
    "Jane@ACME.com", "o'brien@acme.com", "jane+tag@acme.com", "  jane@acme.com  ",
    "+1 (555) 123-4567", "+60 12-123 3112", "17", "3", _MEMBER1, "user_xyz789",
]

#: A valid request per provider; one field at a time is replaced by a corpus entry.
BASE: dict[str, dict[str, dict[str, str]]] = {
    "teli": {"contact": {"phone": "+15551234567"}, "assignee": {"id": "user_xyz789"}},
    "vambe": {"contact": {"id": _UUID1}, "assignee": {"id": _MEMBER1}},
    "aelyst": {"contact": {"id": "3"}, "assignee": {"id": "17"}},
}
FIELDS = [("contact", "phone"), ("contact", "email"), ("contact", "id"),
          ("assignee", "email"), ("assignee", "id")]
UNASSIGN = {"teli": True, "vambe": False, "aelyst": True}
REFUSALS = {400: {"invalid_request"}, 422: {"untranslatable_identifier"}}
_DIGITS = re.compile(r"\D")


def _digits(s: str) -> str:
    return _DIGITS.sub("", s)


def _body(ptype: str, op: str, part: str, kind: str, value: str) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant": TENANT[ptype], **BASE[ptype]}
    body[part] = {kind: value}
    if op == "unassign":
        body.pop("assignee")
    return body


def _exact(ptype: str, part: str, kind: str, value: str, e: dict[str, Any]) -> list[str]:
    """Why a journaled request does not carry exactly the normalized identifier."""
    path, query, sent = e["path"], e["query"], orjson.loads(e["body"] or "null")
    want = value.strip()
    if kind == "email":
        want = want.lower()
    if ptype == "aelyst" and part == "contact":
        seg = path.split("/")[3]
        ident = unquote(seg)
        if quote(ident, safe=":@") != seg:
            return [f"segment {seg!r} is not canonically encoded"]
        if kind == "phone":
            ok = re.fullmatch(r"phone:\+[0-9]{6,15}", ident) is not None and \
                _digits(ident).endswith(_digits(value))
            return [] if ok else [f"{ident!r} is not the E.164 of {value!r}"]
        return [] if ident == f"{kind}:{want}" else [f"{ident!r} != {kind}:{want!r}"]
    if ptype == "aelyst":  # the assignee travels in the body
        wanted: Any = int(want) if kind == "id" else want
        return [] if sent == {"assignee": wanted} else [f"body {sent!r} != {wanted!r}"]
    if ptype == "vambe" and path == "/api/public/contacts/search":
        got = parse_qs(query, keep_blank_values=True)
        ok = got == ({"email": [want]} if kind == "email" else {"phone": [_digits(value)]}) \
            or (kind == "phone" and list(got) == ["phone"] and _digits(value).endswith(
                got["phone"][0][-8:]))
        return [] if ok else [f"search {got!r} is not for {want!r}"]
    if ptype == "vambe" and path.startswith("/api/public/contact/"):
        parts = path.split("/")
        got_id = parts[4] if part == "contact" else parts[6]
        return [] if kind != "id" or got_id == want.lower() else [f"{got_id!r} != {want!r}"]
    if ptype == "teli" and sent is not None:
        if part == "assignee" and kind == "id" and sent.get("assigned_user_id") != want:
            return [f"assigned_user_id {sent.get('assigned_user_id')!r} != {want!r}"]
        phone = sent.get("phone_number", "")
        if re.fullmatch(r"\+[0-9]{6,15}", phone) is None:
            return [f"phone_number {phone!r} is not E.164"]
    return []


async def _exchanges(gw: TestClient[Any, Any]) -> int:
    text = await (await gw.get("/metrics")).text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_upstream_requests_total{")))


@pytest.mark.parametrize("ptype", PROVIDERS)
async def test_identifier_corpus(hgw: TestClient[Any, Any], hsandboxes: dict[str, Sandbox],
                                 ptype: str) -> None:
    own = hsandboxes[ptype]
    journaled, problems = 0, []
    ops = ["assign", "unassign"] if UNASSIGN[ptype] else ["assign"]
    batches = [(op, part, kind) for op in ops for part, kind in FIELDS
               if not (op == "unassign" and part == "assignee")]
    for op, part, kind in batches:
        # The gateway forwards X-Request-ID upstream: it ties each journal entry
        # to the request (and corpus entry) that caused it.
        sent: dict[str, tuple[str, str, int]] = {}
        for n, value in enumerate(CORPUS):
            rid = f"hz-{op}-{part}-{kind}-{n}"
            resp = await hgw.post(f"/v1/{op}", json=_body(ptype, op, part, kind, value),
                                  headers={**auth(), "X-Request-ID": rid})
            body = await resp.json(content_type=None)
            conforms(resp.status, body)
            where = f"{op} {part}.{kind}={value!r}: {resp.status} {body}"
            sent[rid] = (value, where, resp.status)
            count("identifiers tried", ptype)
            count("identifier answers", f"{resp.status} {body.get('code', 'ok')}")
            assert resp.status != 500, where
            if resp.status in REFUSALS:
                assert body["code"] in REFUSALS[resp.status], where
            else:
                assert resp.status in (200, 202, 404, 409), where
        entries = await own.journal()
        await clear_journal(own)
        journaled += len(entries)
        for e in entries:
            rid = {k.lower(): v for k, v in e["headers"].items()}.get("x-request-id", "")
            assert rid in sent, f"an upstream request no client request caused: {e}"
            value, where, status = sent[rid]
            assert status not in REFUSALS, f"{where}: refused but sent {e}"
            problems += [f"{where}: {p}" for p in path_problems(ptype, e)]
            problems += [f"{where}: {p}" for p in _exact(ptype, part, kind, value, e)]
    assert problems == []
    for other in (s for p, s in hsandboxes.items() if p != ptype):
        assert await other.journal() == [], f"a {ptype} request reached {other.type}"
    # Every exchange the gateway made is one the provider's sandbox journaled.
    assert await _exchanges(hgw) == journaled
    count("identifier upstream requests", ptype, journaled)


def test_corpus_covers_each_family() -> None:
    count("identifier corpus", "entries", len(CORPUS))
    assert len(set(CORPUS)) == len(CORPUS)
    for needle in ("../", "%2e%2e", "%2F", "?", "#", "@", "\r\n", "\x00", "\u0430", "17x"):
        assert any(needle.lower() in c.lower() for c in CORPUS), needle
