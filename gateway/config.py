"""The configuration: one YAML file, validated whole, loaded once per (re)load.

``${NAME}`` (or ``${NAME:-default}``) in any string takes a value from the
environment. :func:`load_config` returns a :class:`Config` or raises
:class:`ConfigError` listing every problem, each naming the exact key.
Provider keys left out take the defaults of the provider's adapter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import phonenumbers
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from gateway.errors import InvalidRequest
from gateway.identifiers import check_provider_id
from gateway.registry import AdapterClass, adapters


class ConfigError(Exception):
    """The file cannot serve; ``problems`` names every key that is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class ClientRateLimit(_Strict):
    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitSpec(_Strict):
    rate: float = Field(gt=0)
    burst: int = Field(ge=1)
    scope: Literal["account", "path"] = "account"
    max_wait_s: float = Field(2.0, ge=0)


class RetrySpec(_Strict):
    max_attempts: int = Field(ge=1, le=100)
    deadline_s: float = Field(gt=0)
    backoff_base_s: float = Field(gt=0)
    backoff_max_s: float = Field(gt=0)
    queued_backoff_s: float = Field(gt=0)
    give_up_after_s: float = Field(gt=0)


class LimiterSpec(_Strict):
    """``ratelimit``: how the limiter behaves, whatever the provider (gateway/ratelimit)."""

    # When Redis fails: decide locally at rate / replicas, or refuse with 429.
    on_redis_error: Literal["local", "fail_closed"] = "local"
    replicas: int = Field(1, ge=1, le=1000)
    # Provider buckets run this fraction below the configured rate: requests reach
    # the provider with network jitter, and a sliding-window limit counts arrivals.
    headroom: float = Field(0.1, ge=0, le=0.5)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ClientSpec(_Strict):
    name: str = Field(pattern=_NAME)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    tenants: list[str] = Field(min_length=1)
    rate_limit: ClientRateLimit | None = None
    admin: bool = False


class TenantSpec(_Strict):
    provider: str
    default_region: str = "US"
    campaign_id: str | None = Field(None, min_length=1, max_length=128)
    organization_id: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if v.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region code phonenumbers knows (e.g. US, GB, CL)")
        return v.upper()


class ProviderSpec(_Strict):
    """A provider as written in the file; every key but type and api_key may be left out."""

    type: str
    api_key: SecretStr = Field(min_length=1)
    base_url: str | None = Field(None, pattern=r"^https?://[^\s?#]+$")
    timeout_s: float | None = Field(None, gt=0, le=300)
    rate_limit: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None

    @field_validator("base_url")
    @classmethod
    def _no_userinfo(cls, v: str | None) -> str | None:
        # A URL is shown (dry runs) and logged where a credential must never be; the
        # credential is api_key, sent in the provider's own header.
        if v is not None and "@" in v.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("must not carry credentials (user:password@); "
                             "the credential is api_key")
        return v


class FileSpec(_Strict):
    listen: Listen = Listen()
    redis_url: str | None = Field(None, pattern=r"^(rediss?|unix)://")
    shutdown_grace_s: float = Field(20.0, ge=0, le=600)
    ratelimit: LimiterSpec = LimiterSpec()
    clients: list[ClientSpec] = Field(default_factory=list)
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    directory: dict[str, dict[str, int | str]] = Field(default_factory=dict)


class ProviderConfig(_Strict):
    """A provider with its adapter's defaults filled in."""

    name: str
    type: str
    api_key: SecretStr
    base_url: str
    timeout_s: float
    rate_limit: RateLimitSpec
    retry: RetrySpec


class Config(_Strict):
    """The validated configuration the gateway serves with."""

    listen: Listen
    redis_url: str | None
    shutdown_grace_s: float
    clients: tuple[ClientSpec, ...]
    tenants: dict[str, TenantSpec]
    providers: dict[str, ProviderConfig]
    directory: dict[str, dict[str, str]]
    ratelimit: LimiterSpec = LimiterSpec()
    source: str = "<memory>"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(node: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, env, f"{where}.{k}" if where else str(k), problems)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        value = env.get(m.group(1), m.group(2))
        if value is None:
            problems.append(f"{where}: environment variable {m.group(1)} is not set")
            return m.group(0)  # left as written: the file is refused anyway
        return value

    return _ENV.sub(repl, node)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[str]:
    return [f"{prefix}{_loc(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]


def _resolve_provider(
    name: str, spec: ProviderSpec, registry: Mapping[str, AdapterClass], problems: list[str]
) -> ProviderConfig | None:
    cls = registry.get(spec.type)
    if cls is None:
        known = ", ".join(sorted(registry)) or "none installed"
        problems.append(f"providers.{name}.type: unknown provider type {spec.type!r} ({known})")
        return None
    d = cls.defaults
    where = f"providers.{name}."
    rate: RateLimitSpec | None = None
    retry: RetrySpec | None = None
    try:
        rate = RateLimitSpec(**{**asdict(d.rate_limit), **(spec.rate_limit or {})})
    except ValidationError as e:
        problems.extend(_pydantic_problems(e, where + "rate_limit."))
    try:
        retry = RetrySpec(**{**asdict(d.retry), **(spec.retry or {})})
    except ValidationError as e:
        problems.extend(_pydantic_problems(e, where + "retry."))
    if rate is None or retry is None:
        return None
    return ProviderConfig(
        name=name, type=spec.type, api_key=spec.api_key,
        base_url=(spec.base_url or d.base_url).rstrip("/"),
        timeout_s=spec.timeout_s or d.timeout_s, rate_limit=rate, retry=retry,
    )


def _cross_check(spec: FileSpec, problems: list[str],
                 invalid: Mapping[str, set[str]] | None = None) -> None:
    """References between sections. ``invalid``: entries already reported and left out
    (by section), which still count as existing, so no second problem names them."""
    invalid = invalid or {}
    providers = set(spec.providers) | invalid.get("providers", set())
    tenants = set(spec.tenants) | invalid.get("tenants", set())
    any_provider, any_tenant = _ANY in providers, _ANY in tenants
    for tname, tenant in spec.tenants.items():
        if tenant.provider not in providers and not any_provider:
            problems.append(
                f"tenants.{tname}.provider: {tenant.provider!r} is not a key of providers")
    names: set[str] = set()
    hashes: set[str] = set()
    # Entries left out shift the list: problems name each client by its place in the file.
    left_out = sorted(int(i) for i in invalid.get("clients", set()) if i != _ANY)
    places = [i for i in range(len(spec.clients) + len(left_out)) if i not in left_out]
    for place, client in zip(places, spec.clients, strict=False):
        where = f"clients[{place}]"
        if client.name in names:
            problems.append(f"{where}.name: {client.name!r} is used by another client")
        if client.key_sha256.lower() in hashes:
            problems.append(f"{where}.key_sha256: the same key is given to another client")
        names.add(client.name)
        hashes.add(client.key_sha256.lower())
        for t in client.tenants:
            if t not in tenants and not any_tenant:
                problems.append(f"{where}.tenants: {t!r} is not a key of tenants")
    for email, entries in spec.directory.items():
        if "@" not in email or email != email.strip().lower():
            problems.append(f"directory.{email}: keys are lower-case email addresses")
        for pname in entries:
            if pname not in providers and not any_provider:
                problems.append(f"directory.{email}.{pname}: not a key of providers")


def _check_directory(
    spec: FileSpec, registry: Mapping[str, AdapterClass], problems: list[str]
) -> None:
    """Each override is the named provider's own user id, by its adapter's pattern.

    An override is sent as ``assignee.id`` without the request-time check, so a bad
    one would fail every request as the client's fault; it is the file's.
    """
    for email, entries in spec.directory.items():
        for pname, value in entries.items():
            provider = spec.providers.get(pname)
            cls = None if provider is None else registry.get(provider.type)
            if provider is None or cls is None:
                continue  # reported already: not a provider, or an unknown type
            pattern = cls.capabilities.assignee_id_pattern
            try:
                check_provider_id(str(value), pattern, "assignee.id", provider.type)
            except InvalidRequest:
                problems.append(f"directory.{email}.{pname}: {str(value)!r} is not a "
                                f"{provider.type} user id (it must match {pattern})")


#: The sections whose entries are checked one by one (by name, or by index).
_ENTRY_SECTIONS = frozenset({"providers", "tenants", "clients", "directory"})
#: In ``invalid``: the whole section was left out, so any reference into it may be right.
_ANY = "*"


def _validate_file(raw: dict[str, Any], problems: list[str]
                   ) -> tuple[FileSpec, dict[str, set[str]]]:
    """The file's model, and every problem in it, not only the first section's.

    What fails validation is reported, then left out (a whole entry of providers,
    tenants, clients or directory; any other key falls back to its default), and
    the rest is validated again, so the checks after this one see every section.
    Returns the model of what is valid and the names left out, by section.
    """
    invalid: dict[str, set[str]] = {}
    doc = dict(raw)
    for _ in range(3):  # the second pass validates what is left; a third is a guard
        try:
            return FileSpec.model_validate(doc), invalid
        except ValidationError as e:
            for problem in _pydantic_problems(e):
                if problem not in problems:
                    problems.append(problem)
            drop: dict[str, set[Any]] = {}
            for err in e.errors(include_url=False):
                loc = err["loc"]
                section = str(loc[0]) if loc else ""
                if section in _ENTRY_SECTIONS and len(loc) > 1 and isinstance(
                        doc.get(section), (dict, list)):
                    drop.setdefault(section, set()).add(loc[1])
                    invalid.setdefault(section, set()).add(str(loc[1]))
                else:
                    doc.pop(section, None)
                    if section in _ENTRY_SECTIONS:  # the whole section is unreadable
                        invalid.setdefault(section, set()).add(_ANY)
            for section, keys in drop.items():
                entries = doc[section]
                doc[section] = ({k: v for k, v in entries.items() if k not in keys}
                                if isinstance(entries, dict)
                                else [v for i, v in enumerate(entries) if i not in keys])
    raise ConfigError(problems)


def build_config(
    raw: Any,
    *,
    env: Mapping[str, str] | None = None,
    registry: Mapping[str, AdapterClass] | None = None,
    source: str = "<memory>",
) -> Config:
    """Validate a parsed document. Raises ConfigError with every problem found."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): the file must hold a mapping of keys"])
    raw = _substitute(raw, os.environ if env is None else env, "", problems)
    spec, invalid = _validate_file(raw, problems)
    _cross_check(spec, problems, invalid)
    reg = adapters() if registry is None else registry
    providers = {n: _resolve_provider(n, p, reg, problems) for n, p in spec.providers.items()}
    _check_directory(spec, reg, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        listen=spec.listen, redis_url=spec.redis_url, shutdown_grace_s=spec.shutdown_grace_s,
        clients=tuple(spec.clients), ratelimit=spec.ratelimit,
        tenants=spec.tenants,
        providers={n: p for n, p in providers.items() if p is not None},
        directory={e: {p: str(v) for p, v in m.items()} for e, m in spec.directory.items()},
        source=source,
    )


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate one file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read the file ({e.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{p}: not valid YAML{at}"]) from None
    return build_config(raw, env=env, source=str(p))
