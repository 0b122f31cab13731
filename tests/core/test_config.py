"""Configuration: validation names the exact key; defaults come from the adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, build_config, load_config

ROOT = Path(__file__).resolve().parents[2]
HASH = "a" * 64


def _minimal(**extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "clients": [{"name": "crm", "key_sha256": HASH, "tenants": ["acme"]}],
        "tenants": {"acme": {"provider": "ae"}},
        "providers": {"ae": {"type": "aelyst", "api_key": "${TOKEN}"}},
    }
    cfg.update(extra)
    return cfg


def _problems(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(raw, env={"TOKEN": "t"} if env is None else env)
    return e.value.problems


def test_minimal_file_takes_adapter_defaults() -> None:
    cfg = build_config(_minimal(), env={"TOKEN": "secret-token"})
    p = cfg.providers["ae"]
    assert p.base_url == "https://api.aelyst.ai/v1"
    assert (p.rate_limit.rate, p.rate_limit.burst, p.rate_limit.scope) == (5, 1, "path")
    assert p.api_key.get_secret_value() == "secret-token"
    assert "secret-token" not in repr(cfg)
    assert cfg.listen.port == 8080 and cfg.redis_url is None


def test_partial_provider_sections_merge_with_defaults() -> None:
    raw = _minimal()
    raw["providers"]["ae"].update(rate_limit={"rate": 2}, retry={"deadline_s": 3})
    p = build_config(raw, env={"TOKEN": "t"}).providers["ae"]
    assert (p.rate_limit.rate, p.rate_limit.burst) == (2, 1)
    assert p.retry.deadline_s == 3 and p.retry.queued_backoff_s == 30


def test_every_problem_is_listed_with_its_key() -> None:
    raw = _minimal()
    raw["tenants"]["acme"]["default_region"] = "XX"
    raw["tenants"]["beta"] = {"provider": "missing"}
    raw["clients"].append({"name": "crm", "key_sha256": HASH, "tenants": ["nope"]})
    problems = _problems(raw)
    text = "\n".join(problems)
    assert "tenants.acme.default_region" in text
    raw["tenants"]["acme"]["default_region"] = "US"
    problems = _problems(raw)
    joined = "\n".join(problems)
    assert "tenants.beta.provider: 'missing' is not a key of providers" in joined
    assert "clients[1].name" in joined
    assert "clients[1].key_sha256" in joined
    assert "clients[1].tenants: 'nope'" in joined


def test_a_problem_in_one_section_does_not_hide_the_others() -> None:
    """check-config lists every problem: a bad listen port, an entry with a bad value
    or a bad rate limit no longer hide the cross-section checks or the retry section."""
    raw = _minimal(listen={"port": 99999})
    raw["clients"].insert(0, {"name": "bad", "key_sha256": "00", "tenants": ["acme"]})
    raw["clients"].append({"name": "late", "key_sha256": "b" * 64, "tenants": ["ghost"]})
    raw["tenants"]["beta"] = {"provider": "missing", "default_region": "XX"}
    raw["tenants"]["gamma"] = {"provider": "missing"}
    raw["providers"]["ae"].update(rate_limit={"rate": 0}, retry={"max_attempts": 0})
    problems = _problems(raw)
    assert problems[0].startswith("listen.port")
    joined = "\n".join(problems)
    for expected in ("clients[0].key_sha256", "tenants.beta.default_region",
                     "tenants.gamma.provider: 'missing' is not a key of providers",
                     "clients[2].tenants: 'ghost' is not a key of tenants",  # its own place
                     "providers.ae.rate_limit.rate", "providers.ae.retry.max_attempts"):
        assert expected in joined, (expected, problems)
    # An entry with a problem of its own is not reported again through a reference.
    assert "beta" not in joined.replace("tenants.beta.default_region", "")
    assert len(problems) == len(set(problems)) == 7


def test_an_unreadable_section_is_one_problem_not_one_per_reference() -> None:
    raw = _minimal(tenants=["acme"])  # a list, not a mapping
    problems = _problems(raw)
    assert len(problems) == 1 and problems[0].startswith("tenants"), problems


def test_a_base_url_with_credentials_is_refused_without_showing_them() -> None:
    raw = _minimal()
    raw["providers"]["ae"]["base_url"] = "https://svc:s3cr3t@api.aelyst.ai/v1"
    [problem] = _problems(raw)
    assert problem.startswith("providers.ae.base_url") and "credentials" in problem
    assert "s3cr3t" not in problem
    raw["providers"]["ae"]["base_url"] = "https://api.aelyst.ai/v1/a@b"  # in the path: fine
    assert build_config(raw, env={"TOKEN": "t"}).providers["ae"].base_url.endswith("/a@b")


def test_unknown_type_unknown_key_bad_values() -> None:
    raw = _minimal()
    raw["providers"]["ae"]["type"] = "smoke-signals"
    assert any("providers.ae.type: unknown provider type" in p for p in _problems(raw))
    assert any(p.startswith("surprise") for p in _problems(_minimal(surprise=1)))
    raw = _minimal()
    raw["providers"]["ae"]["rate_limit"] = {"rate": -1, "scope": "galaxy"}
    problems = _problems(raw)
    assert any(p.startswith("providers.ae.rate_limit.rate") for p in problems)
    assert any(p.startswith("providers.ae.rate_limit.scope") for p in problems)


def test_missing_environment_variable_is_named() -> None:
    problems = _problems(_minimal(), env={})
    assert problems == ["providers.ae.api_key: environment variable TOKEN is not set"]


def test_env_default_syntax() -> None:
    raw = _minimal(redis_url="${REDIS_URL:-redis://localhost:6379/0}")
    assert build_config(raw, env={"TOKEN": "t"}).redis_url == "redis://localhost:6379/0"


def test_directory_checks() -> None:
    assert any("directory.Jane@x.com" in p for p in
               _problems(_minimal(directory={"Jane@x.com": {"ae": 1}})))
    assert any("directory.j@x.com.zz" in p for p in
               _problems(_minimal(directory={"j@x.com": {"zz": 1}})))


def test_directory_unknown_provider_is_refused() -> None:
    problems = _problems(_minimal(directory={"jane@acme.com": {"nowhere": 17}}))
    assert problems == ["directory.jane@acme.com.nowhere: not a key of providers"]


@pytest.mark.parametrize(("ptype", "value"), [
    ("aelyst", "jane@other.com"),  # an email where Aelyst needs its integer user id
    ("aelyst", "007"),
    ("aelyst", 0),
    ("vambe", "17"),  # team members are UUIDs
    ("teli", "user/../admin"),
])
def test_directory_value_must_be_the_providers_user_id(ptype: str, value: Any) -> None:
    raw = _minimal(directory={"jane@acme.com": {"p": value}})
    raw["providers"]["p"] = {"type": ptype, "api_key": "secret-key"}
    problems = _problems(raw)
    assert len(problems) == 1, problems
    [problem] = problems
    assert problem.startswith("directory.jane@acme.com.p: ")
    assert f"not a {ptype} user id" in problem
    assert str(value) in problem  # a directory value is not a secret: shown to fix it
    assert "secret-key" not in problem


def test_directory_values_of_every_provider_type_validate() -> None:
    raw = _minimal(directory={"jane@acme.com": {
        "ae": 17, "te": "1763661807373x532913854895880007",
        "va": "11111111-1111-4111-8111-000000000001"}})
    raw["providers"].update(te={"type": "teli", "api_key": "k"},
                            va={"type": "vambe", "api_key": "k"})
    cfg = build_config(raw, env={"TOKEN": "t"})
    assert cfg.directory["jane@acme.com"] == {
        "ae": "17", "te": "1763661807373x532913854895880007",
        "va": "11111111-1111-4111-8111-000000000001"}


def test_directory_entry_of_a_provider_with_an_unknown_type_reports_the_type_only() -> None:
    raw = _minimal(directory={"jane@acme.com": {"ae": "x"}})
    raw["providers"]["ae"]["type"] = "smoke-signals"
    problems = _problems(raw)
    assert len(problems) == 1 and problems[0].startswith("providers.ae.type"), problems


def test_shipped_files_validate() -> None:
    load_config(ROOT / "config" / "sandbox.yaml")
    env = {k: "x" for k in ("AELYST_TOKEN", "TELI_API_KEY", "VAMBE_API_KEY",
                            "GLOBEX_CAMPAIGN_ID", "GLOBEX_ORG_ID")}
    env.update(CRM_KEY_SHA256="b" * 64, SUPPORT_KEY_SHA256="c" * 64,
               PLATFORM_KEY_SHA256="d" * 64)
    cfg = load_config(ROOT / "config" / "example.yaml", env=env)
    assert cfg.redis_url == "redis://redis:6379/0"
    assert [c.name for c in cfg.clients if c.admin] == ["platform"]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: {a: {provider: nope}}\n")
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "tenants.a.provider" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config",
                         str(ROOT / "config" / "sandbox.yaml")],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr


def test_hash_key_cli() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "hash-key", "demo-key"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == \
        "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"


def test_the_young_collection_period_comes_from_the_environment() -> None:
    from gateway.cli import GC_YOUNG_ENV, GC_YOUNG_EVERY_S, young_every_s

    assert young_every_s({}) == GC_YOUNG_EVERY_S
    assert young_every_s({GC_YOUNG_ENV: " "}) == GC_YOUNG_EVERY_S
    assert young_every_s({GC_YOUNG_ENV: "1500"}) == 1500.0
    for bad in ("0", "-3", "nan", "inf", "soon"):
        with pytest.raises(ValueError, match=f"{GC_YOUNG_ENV}='{bad}': a number of seconds"):
            young_every_s({GC_YOUNG_ENV: bad})


def test_serve_refuses_a_bad_young_collection_period_before_listening() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config",
                          str(ROOT / "config" / "sandbox.yaml")],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "GATEWAY_GC_YOUNG_EVERY_S": "never"})
    assert run.returncode == 1
    assert "GATEWAY_GC_YOUNG_EVERY_S='never': a number of seconds above 0 is needed" \
        in run.stderr
    assert "serving" not in run.stdout
