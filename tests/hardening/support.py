"""Shared pieces of the hardening suite: canary secrets, configurations, a served
gateway (a real ``gateway serve --with-sandboxes`` process), the documented
upstream path shapes, and the counts the suite prints at the end.

Everything runs on 127.0.0.1. Canary secrets are long, random-looking strings
whose every eight-character substring is distinctive, so finding any such
substring in a log line, a response, a metric or a journal is a leak.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests
import yaml

from gateway.auth import hash_key
from gateway.models import Problem, Queued, Result
from tests.procs import ROOT, free_port

PROVIDERS = ("teli", "vambe", "aelyst")
TENANT = {"teli": "t-teli", "vambe": "t-vambe", "aelyst": "t-aelyst"}

#: Provider credentials: each provider's sandbox accepts only its own.
PROVIDER_KEYS = {
    "teli": "QXQHKkwxMj6XSULDV29kFozkoc",
    "vambe": "9hzjHEUYHp7hAsEklSfx4hoDE2",
    "aelyst": "inl3ZFPDVQ1vRdEBFfxXO09IOt",
}
#: Client keys: never forwarded upstream, never echoed anywhere.
CLIENT_KEYS = {
    "app": "sBiYZ79u0f4kCcGyzRZJjMJDP2",          # all three tenants
    "solo-teli": "aq9OvtHrwFWayUoD6clnF0EdjP",
    "solo-vambe": "eOv4t2xr4Lx4Q96nMQ8btR0Wm8",
    "solo-aelyst": "WohG4OvKWVs1kYQCEvagjEKhp4",
    "duo": "GVApJZ2aqP0o0juttRvrblEkIs",                # t-teli and t-vambe
    "admin": "9PZhtsVjfK48MXYDjJoANM9X0c",             # admin, but only t-aelyst
}
CLIENT_TENANTS = {
    "app": ["t-teli", "t-vambe", "t-aelyst"],
    "solo-teli": ["t-teli"],
    "solo-vambe": ["t-vambe"],
    "solo-aelyst": ["t-aelyst"],
    "duo": ["t-teli", "t-vambe"],
    "admin": ["t-aelyst"],
}
ALL_SECRETS = {**{f"provider:{k}": v for k, v in PROVIDER_KEYS.items()},
               **{f"client:{k}": v for k, v in CLIENT_KEYS.items()}}
_BASE_PATH = {"teli": "", "vambe": "", "aelyst": "/v1"}
UNLIMITED = {"rate": 100_000, "burst": 100_000, "max_wait_s": 0.5}

# -- what the suite prints at the end (see conftest.pytest_terminal_summary) ------------

REPORT: dict[str, Counter[str]] = {}


def count(section: str, key: str, n: int = 1) -> None:
    REPORT.setdefault(section, Counter())[key] += n


# -- canaries ------------------------------------------------------------------------------


def grams(secret: str, n: int = 8) -> set[str]:
    return {secret[i:i + n] for i in range(len(secret) - n + 1)}


_GRAMS = {name: grams(secret) for name, secret in ALL_SECRETS.items()}


def leaks(text: str, names: Iterable[str] | None = None) -> list[str]:
    """The names of the secrets of which any 8-character substring occurs in ``text``."""
    wanted = ALL_SECRETS if names is None else names
    return sorted(n for n in wanted if any(g in text for g in _GRAMS[n]))


def conforms(status: int, body: Any) -> None:
    """An answer of a write route matches its published model (raises if not)."""
    model = Result if status == 200 else Queued if status == 202 else Problem
    model.model_validate(body)
    if status >= 400:
        assert body["status"] == status, body


def auth(client: str = "app") -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENT_KEYS[client]}"}


# -- configuration ---------------------------------------------------------------------------


def config_dict(base_urls: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """One tenant per provider, six clients (see CLIENT_TENANTS), canary credentials.

    Provider limits are lifted: these tests are about what reaches a provider,
    not how fast (the rate-limit suite owns that).
    """
    providers = {
        f"{p}-sb": {"type": p, "base_url": base_urls[p], "api_key": PROVIDER_KEYS[p],
                    "timeout_s": 2, "rate_limit": dict(UNLIMITED),
                    "retry": {"deadline_s": 3, "queued_backoff_s": 0.2, "backoff_base_s": 0.05,
                              "backoff_max_s": 0.2, "give_up_after_s": 20}}
        for p in PROVIDERS
    }
    cfg: dict[str, Any] = {
        "clients": [{"name": name, "key_sha256": hash_key(CLIENT_KEYS[name]),
                     "tenants": list(CLIENT_TENANTS[name]), "admin": name == "admin"}
                    for name in CLIENT_KEYS],
        "tenants": {
            "t-teli": {"provider": "teli-sb", "campaign_id": "camp_abc123",
                       "organization_id": "org_456"},
            "t-vambe": {"provider": "vambe-sb", "default_region": "CL"},
            "t-aelyst": {"provider": "aelyst-sb"},
        },
        "providers": providers,
    }
    cfg.update(overrides)
    return cfg


def sandbox_base_url(ptype: str, root: str) -> str:
    return root.rstrip("/") + _BASE_PATH[ptype]


# -- documented upstream paths -------------------------------------------------------------

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Aelyst's identifier segment as encode_path writes it: only unreserved characters,
# ":" and "@" stay literal; "+" and "'" (allowed in emails) are percent-encoded.
_AELYST_EMAIL = r"(?:[A-Za-z0-9._~@-]|%2B|%27)+"
DOCUMENTED_PATHS: dict[str, list[re.Pattern[str]]] = {
    "teli": [re.compile(r"/v1/threads/(assign|unassign)"),
             re.compile(r"/v1/organizations/org_456/users")],
    "vambe": [re.compile(rf"/api/public/contact/{_UUID}/assign-team-member/{_UUID}"),
              re.compile(r"/api/public/contacts/search"),
              re.compile(r"/api/public/team-members/all")],
    "aelyst": [re.compile(r"/v1/contact/(id:[0-9]{1,18}|email:" + _AELYST_EMAIL
                          + r"|phone:%2B[0-9]{6,15})/conversation/assignee")],
}
_SEARCH_QUERY = re.compile(r"(phone=[0-9]{6,15}|email=[^&#=\s]+)")
_ASSIGN_QUERY = re.compile(r"removeExistingAgents=(true|false)")


def _query_ok(path: str, query: str) -> bool:
    if path == "/api/public/contacts/search":
        return _SEARCH_QUERY.fullmatch(query) is not None
    if path.startswith("/api/public/contact/"):
        return _ASSIGN_QUERY.fullmatch(query) is not None
    return query == ""


def path_problems(ptype: str, entry: dict[str, Any]) -> list[str]:
    """Why a journal entry is not a documented request of ``ptype`` (empty: it is)."""
    path, query = entry["path"], entry["query"]
    out = []
    if not any(p.fullmatch(path) for p in DOCUMENTED_PATHS[ptype]):
        out.append(f"undocumented path {path!r}")
    if not _query_ok(path, query):
        out.append(f"unexpected query {query!r} on {path}")
    return out


# -- a served gateway with its sandboxes -----------------------------------------------------


class ServedGateway:
    """``gateway serve --with-sandboxes`` in a subprocess: the gateway and the three
    sandboxes on their own loopback ports, each sandbox with its canary key."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.port = free_port()
        self.sandbox_ports = {p: free_port() for p in PROVIDERS}
        roots = {p: f"http://127.0.0.1:{port}" for p, port in self.sandbox_ports.items()}
        self.sandbox_roots = roots
        self.config = config_dict({p: sandbox_base_url(p, r) for p, r in roots.items()},
                                  **overrides)
        self.config["listen"] = {"host": "127.0.0.1", "port": self.port}
        self.config_path = workdir / "served.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / "served.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
                 "--with-sandboxes"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited: " + self.log())
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("gateway did not become ready: " + self.log())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sandbox(self, ptype: str, path: str) -> str:
        return self.sandbox_roots[ptype] + path

    def journal(self, ptype: str) -> list[dict[str, Any]]:
        r = requests.get(self.sandbox(ptype, "/_sandbox/journal"), timeout=10)
        return list(r.json()["entries"])

    def control(self, ptype: str, path: str, body: Any = None) -> None:
        r = requests.post(self.sandbox(ptype, path), json=body, timeout=10)
        assert r.status_code < 300, r.text


@contextlib.contextmanager
def served(workdir: Path, **overrides: Any) -> Iterator[ServedGateway]:
    gw = ServedGateway(workdir, **overrides)
    gw.start()
    try:
        # Aelyst's sandbox enforces the documented 5 req/s per path; these runs
        # check shapes and answers, not pacing.
        gw.control("aelyst", "/_sandbox/ratelimit", {"enabled": False})
        yield gw
    finally:
        gw.stop()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
