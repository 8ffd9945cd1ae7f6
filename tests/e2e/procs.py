"""Run postbell's real CLI in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

POSTBELL = str(Path(sys.executable).parent / "postbell")


def env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTBELL_", "SMTP_", "DATABASE_URL"))
    }
    base.update(extra)
    return base


def run(
    *args: str, environ: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTBELL, *args],
        env=environ or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Proc(subprocess.Popen[str]):
    """A postbell process whose output goes to a file (a pipe nobody reads would fill
    up and block it): ``output()`` reads what it wrote so far."""

    log: Any
    captured: str | None = None

    def output(self) -> str:
        if self.captured is not None:  # the process has ended and its log is closed
            return self.captured
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read())


@contextmanager
def background(*args: str, environ: dict[str, str]) -> Iterator[Proc]:
    """A postbell process for the duration of the block; SIGTERM and wait on exit."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = Proc([POSTBELL, *args], env=environ, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = log
        try:
            yield proc
        finally:
            _stop(proc)
            proc.captured = proc.output()


def _stop(proc: Proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, timeout: float = 30, *, proc: Proc | None = None) -> None:
    """Wait until ``url`` answers; with ``proc``, fail at once (with its output) if the
    process that should answer has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}):\n{proc.output()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    tail = f"\n{proc.output()[-3000:]}" if proc is not None else ""
    raise AssertionError(f"{url} did not answer within {timeout}s{tail}")
