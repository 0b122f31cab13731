"""Schemathesis against the live ``/openapi.json``: every operation it lists, with
all its checks (one excepted, see below), positive and negative data, at least
1,000 examples per operation; no 500 and every answer matching the published
schema. Afterwards: only documented requests reached each sandbox, each with its
own provider's credential, and the served gateway's whole output holds no secret.

The gateway validates more than a JSON Schema can say (a phone number must be a
possible number in the tenant's region, a provider id must have the provider's
format, an identifier kind must be one the provider takes), so a schema-valid
request may still get 400 or 422, but only for those reasons:
:func:`semantic_refusals_only` holds every such answer to it.

Requests rotate over four client keys: three that serve one tenant each (a body
without ``tenant`` reaches a real sandbox) and one that serves all three. The
gateway runs as ``gateway serve --with-sandboxes`` in its own process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.openapi import build_openapi
from tests.hardening.support import (
    CLIENT_KEYS,
    PROVIDERS,
    REPORT,
    ServedGateway,
    auth,
    count,
    leaks,
    path_problems,
    served,
)

EXAMPLES = int(os.environ.get("HARDENING_EXAMPLES", "1000"))
KEYS = itertools.cycle(["solo-teli", "solo-vambe", "solo-aelyst", "app"])
#: Fields whose rules go beyond the schema (see the module docstring); ``tenant``
#: is required only of a key that serves several tenants; an ``Idempotency-Key``
#: must also be printable (str.isprintable), which no JSON Schema keyword says.
SEMANTIC_FIELDS = frozenset({"contact.phone", "contact.email", "contact.id",
                             "assignee.email", "assignee.id", "tenant", "Idempotency-Key"})
SEMANTIC_422 = frozenset({"unsupported_operation", "untranslatable_identifier"})
LABELS = [f"{m.upper()} {p}" for p, ops in build_openapi()["paths"].items() for m in ops]

# The document the gateway serves at /openapi.json (checked equal below), loaded
# at collection: schemathesis makes one test per operation.
schema = schemathesis.openapi.from_dict(build_openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=EXAMPLES, deterministic=True)
# Schema-valid requests may be refused for semantic reasons only; the
# additional check below holds each such refusal to that.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]


@pytest.fixture(scope="module")
def served_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    with served(tmp_path_factory.mktemp("fuzz")) as gw:
        yield gw


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_served_document_is_the_fuzzed_one(served_gw: ServedGateway) -> None:
    assert requests.get(served_gw.url + "/openapi.json", timeout=5).json() == build_openapi()


def semantic_refusals_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request refused with 400/422 names a field the schema cannot judge."""
    meta = case.meta
    if meta is None or response.status_code not in (400, 422):
        return None
    # In the coverage phase a "positive" case may carry one negative component.
    modes = [meta.generation.mode, *(c.mode for c in meta.components.values())]
    if not all(m.is_positive for m in modes):
        return None
    body = response.json()
    if response.status_code == 422:
        assert body["code"] in SEMANTIC_422, body
        return True
    assert body["code"] == "invalid_request", body
    fields = {e["field"] for e in body.get("errors") or []}
    assert fields and fields <= SEMANTIC_FIELDS, body
    return True


def no_secret_and_no_500(ctx: Any, response: Any, case: Any) -> bool | None:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    assert not leaks(response.text + headers), "a secret in an answer"
    assert response.status_code != 500, response.text
    return True


@pytest.mark.timeout(600)
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: Any, served_gw: ServedGateway,
                             http: requests.Session) -> None:
    response = case.call_and_validate(
        base_url=served_gw.url, session=http, headers=auth(next(KEYS)),
        additional_checks=[semantic_refusals_only, no_secret_and_no_500], timeout=15)
    count("schemathesis examples", case.operation.label)
    count("schemathesis status", str(response.status_code))


def test_every_operation_got_its_examples() -> None:
    examples = REPORT.get("schemathesis examples", {})
    for label in LABELS:
        # /healthz and /readyz take no input: schemathesis runs out of new cases.
        assert examples.get(label, 0) >= EXAMPLES or label.endswith(("/healthz", "/readyz")), (
            label, examples)


def test_fuzzed_traffic_reached_only_documented_paths(served_gw: ServedGateway) -> None:
    """What reached each sandbox was a documented request, carrying that provider's
    credential and no other secret."""
    clients = [f"client:{c}" for c in CLIENT_KEYS]
    for ptype in PROVIDERS:
        entries = served_gw.journal(ptype)
        count("schemathesis upstream requests", ptype, len(entries))
        others = [f"provider:{p}" for p in PROVIDERS if p != ptype]
        for e in entries:
            assert path_problems(ptype, e) == [], e
            text = f"{e['path']}?{e['query']}\n{e['headers']}\n{e['body']}"
            assert leaks(text, others + clients) == [], e


def test_405_names_the_allowed_methods(served_gw: ServedGateway) -> None:
    r = requests.request("TRACE", served_gw.url + "/v1/tenants", headers=auth(), timeout=5)
    assert r.status_code == 405
    assert r.headers.get("Allow", "").split(",")[0].strip() in {"GET", "HEAD"}
    assert "GET" in r.headers["Allow"] and r.json()["code"] == "method_not_allowed"


def test_served_log_holds_no_secret(served_gw: ServedGateway) -> None:
    log = served_gw.log()
    assert '"route"' in log, "the served gateway logged no request"
    assert leaks(log) == []
