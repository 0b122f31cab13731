"""The deploy files parse and agree with the code.

No image is built here (no container engine on CI): the Dockerfile's command
is run as the image would run it, against an example-shaped configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.config import build_config
from tests.procs import free_port
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _fake_env(text: str) -> dict[str, str]:
    env = {}
    for name in ENV_VAR.findall(text):
        env[name] = (hashlib.sha256(name.encode()).hexdigest() if name.endswith("SHA256") else
                     "redis://127.0.0.1:6379/0" if name == "REDIS_URL" else f"x-{name.lower()}")
    return env


def test_every_yaml_and_json_file_parses() -> None:
    files = list(DEPLOY.rglob("*.yml")) + list(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        assert _docs(f), f
    for f in DEPLOY.rglob("*.json"):
        json.loads(f.read_text())


def test_compose_services_and_mounts() -> None:
    compose = _docs(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {"redis", "sandboxes", "gateway-1", "gateway-2", "prometheus", "grafana"} <= set(
        services)
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"compose mounts a missing file: {src}"
    gw = services["gateway-1"]
    cfg_text = (DEPLOY / "compose" / "gateway.yaml").read_text()
    env = dict(gw["environment"])
    assert set(ENV_VAR.findall(cfg_text)) <= set(env)
    cfg = build_config(yaml.safe_load(cfg_text), env=env)
    assert cfg.redis_url == "redis://redis:6379/0"
    # The sandboxes service serves the ports the configuration points at.
    sandbox_ports = {p.split(":")[1] for p in services["sandboxes"]["ports"]}
    for p in cfg.providers.values():
        assert p.base_url.split(":")[2].split("/")[0] in sandbox_ports
    for key in ("TELI_API_KEY", "VAMBE_API_KEY", "AELYST_TOKEN"):
        assert key in env


def test_kubernetes_manifests_agree_with_the_code() -> None:
    k8s = DEPLOY / "k8s"
    kust = _docs(k8s / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (k8s / res).exists()
    kinds = {d["kind"] for res in kust["resources"] for d in _docs(k8s / res)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    cfg_text = (k8s / "config.yaml").read_text()
    cfg = build_config(yaml.safe_load(cfg_text), env=_fake_env(cfg_text))
    secret = _docs(k8s / "secret.example.yaml")[0]
    assert set(ENV_VAR.findall(cfg_text)) <= set(secret["stringData"]), "a ${VAR} has no secret"
    dep = _docs(k8s / "deployment.yaml")[0]
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == cfg.listen.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.shutdown_grace_s
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert container["args"][-1] == container["volumeMounts"][0]["mountPath"]
    assert "requests" in container["resources"]


def _dockerfile_command() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    return [*entry, *cmd]


async def test_image_command_serves_example_shaped_config(tmp_path: Path) -> None:
    argv = _dockerfile_command()
    assert argv[:2] == ["gateway", "serve"]
    cfg_text = (DEPLOY / "k8s" / "config.yaml").read_text()
    port = free_port()
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cfg_text.replace("port: 8080", f"port: {port}").replace(
        "host: 0.0.0.0", "host: 127.0.0.1"))
    redis = RedisServer(tmp_path)
    redis.start()
    env = {**os.environ, **_fake_env(cfg_text), "REDIS_URL": redis.url}
    args = [a if a != "/etc/gateway/config.yaml" else str(cfg_file) for a in argv[1:]]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        output = []
        async with asyncio.timeout(20):
            while b"gateway serving" not in (line := await proc.stdout.readline()):
                output.append(line.decode())
                assert line, "the gateway exited: " + "".join(output)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            for path in ("/healthz", "/readyz"):
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == 200, (path, await r.text())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        redis.stop()
