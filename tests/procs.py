"""Real gateway processes for tests: started from a config file, signalled, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``python -m gateway.cli serve`` on a free port, with its output kept for assertions."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "gw") -> None:
        self.port = free_port()
        self.config_path = workdir / f"{name}.yaml"
        self.config = {**config, "listen": {"host": "127.0.0.1", "port": self.port}}
        self.write_config(self.config)
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        self.config_path.write_text(text)

    async def start(self, timeout_s: float = 20) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line and self.proc.returncode is not None:
                    raise RuntimeError("gateway exited: " + "".join(self.output))
                self.output.append(line)
                if "gateway serving" in line:
                    break
        self._reader = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output.append(line.decode())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await self.wait(30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
