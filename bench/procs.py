"""The processes of a benchmark: started pinned, checked ready, stopped by pid.

Every process the harness starts is recorded in a :class:`Procs` and stopped
(SIGTERM, then SIGKILL) by its own pid when the harness ends, whatever the
reason; nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def http(method: str, url: str, body: bytes | None = None,
         headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    workdir: Path
    cores: tuple[str, str] | None  # (system under test, everything else); None: no pinning
    nice: int = 0  # applied to every process started (and to wrk): see bench.run --nice
    started: list[Proc] = field(default_factory=list)

    def wrap(self, argv: Sequence[str], *, sut: bool) -> list[str]:
        """argv under ``nice`` and pinned to its core."""
        cmd = list(argv)
        if self.cores is not None:
            cmd = ["taskset", "-c", self.cores[0] if sut else self.cores[1], *cmd]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        return cmd

    def popen(self, argv: Sequence[str], *, sut: bool, stdout: Any, stderr: Any,
              env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start argv pinned and reniced, in a session of its own.

        With autogroup scheduling (Linux's default for desktops and many VMs) the
        CPU is shared fairly between sessions and ``nice`` only ranks processes within
        one session; so each process gets its own session, and that session's
        autogroup gets the niceness too.
        """
        popen = subprocess.Popen(self.wrap(argv, sut=sut), stdout=stdout, stderr=stderr,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, **(env or {})}, cwd=cwd)
        if self.nice:
            with contextlib.suppress(OSError):
                Path(f"/proc/{popen.pid}/autogroup").write_text(str(self.nice))
        return popen

    def start(self, name: str, argv: Sequence[str], *, sut: bool,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
        """Start argv; ``cwd``: where ``python -m`` finds its package first."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = self.popen(argv, sut=sut, stdout=out, stderr=subprocess.STDOUT, env=env,
                               cwd=cwd)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, grace_s: float = 5.0) -> None:
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def exit_on_sigterm() -> None:
    """SIGTERM ends the harness through its ``finally``: the processes it started (each
    in a session of its own, out of reach of the terminal's Ctrl-C) are stopped."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def wait_port(port: int, proc: Proc, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout_s:g} s:\n"
                       f"{proc.tail()}")


def wait_http_ok(url: str, proc: Proc, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            status, body = http("GET", url, timeout=1.0)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as e:
            last = type(e).__name__
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: {url} not 200 within {timeout_s:g} s ({last}):\n"
                       f"{proc.tail()}")
