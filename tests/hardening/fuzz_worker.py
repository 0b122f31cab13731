"""The schemathesis run itself, one pytest process per share of the operations.

Not collected by a plain ``pytest`` run (the file name has no ``test_`` prefix):
``test_schema_fuzz.py`` starts a served gateway and runs this module in two
processes at once, each over part of the operations the published document
lists (``HARDENING_FUZZ_OPS``), against ``HARDENING_FUZZ_URL``. Hypothesis data
generation is the costly part and is CPU-bound, so two processes on two cores
halve the time of 1,000 examples per operation.

Every check schemathesis has runs (one excepted, see below), with positive and
negative data. The gateway validates more than a JSON Schema can say (a phone
number must be a possible number in the tenant's region, a provider id must
have the provider's format, an identifier kind must be one the provider
takes), so a schema-valid request may still get 400 or 422, but only for those
reasons: :func:`semantic_refusals_only` holds every such answer to it.

Requests rotate over four client keys: three that serve one tenant each (a body
without ``tenant`` reaches a real sandbox) and one that serves all three.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.openapi import build_openapi
from tests.hardening.support import auth, leaks

URL = os.environ.get("HARDENING_FUZZ_URL", "")
OPS = [o for o in os.environ.get("HARDENING_FUZZ_OPS", "").split(",") if o]
COUNTS_FILE = os.environ.get("HARDENING_COUNTS_FILE", "")
EXAMPLES = int(os.environ.get("HARDENING_EXAMPLES", "1000"))
KEYS = itertools.cycle(["solo-teli", "solo-vambe", "solo-aelyst", "app"])
#: Fields whose rules go beyond the schema (see the module docstring); ``tenant``
#: is required only of a key that serves several tenants; an ``Idempotency-Key``
#: must also be printable (str.isprintable), which no JSON Schema keyword says.
SEMANTIC_FIELDS = frozenset({"contact.phone", "contact.email", "contact.id",
                             "assignee.email", "assignee.id", "tenant", "Idempotency-Key"})
SEMANTIC_422 = frozenset({"unsupported_operation", "untranslatable_identifier"})
COUNTS: Counter[str] = Counter()

pytestmark = pytest.mark.skipif(not URL, reason="run by tests/hardening/test_schema_fuzz.py")

# The document the gateway serves at /openapi.json (test_schema_fuzz.py checks
# they are equal), loaded at collection: schemathesis makes one test per operation.
schema = schemathesis.openapi.from_dict(build_openapi())
if OPS:
    schema = schema.include(name=OPS)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=EXAMPLES, deterministic=True)
# Schema-valid requests may be refused for semantic reasons only; the
# additional check below holds each such refusal to that.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]
# Every check runs but one: the problem middleware drops the Allow header of a
# 405 (gateway/http.py, _map_http). test_schema_fuzz.py's
# test_405_names_the_allowed_methods fails once that is fixed, and then this
# exclusion must go.
schema.config.checks.update(excluded_check_names=["unsupported_method"])


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s
    if COUNTS_FILE:
        Path(COUNTS_FILE).write_text(json.dumps(COUNTS))


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


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: Any, http: requests.Session) -> None:
    response = case.call_and_validate(
        base_url=URL, session=http, headers=auth(next(KEYS)),
        additional_checks=[semantic_refusals_only, no_secret_and_no_500], timeout=15)
    COUNTS[f"examples {case.operation.label}"] += 1
    COUNTS[f"status {response.status_code}"] += 1
