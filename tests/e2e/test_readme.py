"""The README's examples, run as written against a gateway serving config/sandbox.yaml.

The gateway and its sandboxes are started by ``gateway serve --with-sandboxes``
in a subprocess, on free ports (the file is copied with its ports replaced),
and each ``curl`` example is replayed over HTTP with the status its comment
promises. The capability table must match the adapters' declarations.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.capabilities import markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PORTS = (8080, 8081, 8082, 8083)


def _examples() -> list[tuple[str, int]]:
    block = README.split("## Try it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    out, expect = [], 0
    for chunk in re.split(r"\n(?=#|curl)", block.replace("\\\n", " ")):
        m = re.search(r"->\s*(\d{3})", chunk)
        if chunk.startswith("#") and m:
            expect = int(m.group(1))
        elif chunk.startswith("curl"):
            out.append((chunk.strip(), expect))
    return out


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[dict[int, int]]:
    mapping = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    text = (ROOT / "config" / "sandbox.yaml").read_text()
    for old, new in mapping.items():
        text = text.replace(str(old), str(new))
    cfg = tmp_path / "sandbox.yaml"
    cfg.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--with-sandboxes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while b"gateway serving" not in (line := await proc.stdout.readline()):
                assert line, "the gateway exited before serving"
        yield mapping
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def _request(cmd: str, mapping: dict[int, int]) -> tuple[str, str, dict[str, str], str | None]:
    args = shlex.split(cmd)[1:]
    method, url, headers, data = "GET", "", {}, None
    it = iter(args)
    for a in it:
        if a == "-X":
            method = next(it)
        elif a == "-H":
            k, _, v = next(it).partition(":")
            headers[k.strip()] = v.strip()
        elif a == "-d":
            data = next(it)
        elif not a.startswith("-"):
            url = a
    for old, new in mapping.items():
        url = url.replace(f"localhost:{old}", f"127.0.0.1:{new}")
    return method, "http://" + url, headers, data


async def test_readme_examples_work_as_written(served: dict[int, int]) -> None:
    examples = _examples()
    assert len(examples) >= 8
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for cmd, expect in examples:
            method, url, headers, data = _request(cmd, served)
            async with s.request(method, url, headers=headers, data=data) as r:
                assert r.status == expect, (cmd, r.status, await r.text())


def test_capability_table_matches_the_adapters() -> None:
    start, end = "<!-- capabilities:start -->\n", "<!-- capabilities:end -->"
    table = README.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table()
