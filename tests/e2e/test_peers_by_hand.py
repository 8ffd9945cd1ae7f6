"""``python -m tests.peers NAME`` (docs/testing.md) runs a peer and shows what it gets."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_peer_run_by_hand_prints_its_address_and_what_it_receives() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers", "webhooks"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert url, first
        assert "running" in proc.stdout.readline()
        request = urllib.request.Request(url.group(0) + "/hook", data=b'{"hello": 1}')
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        assert proc.stdout.readline().strip() == 'POST /hook {"hello": 1}'
    finally:
        proc.terminate()
        proc.wait(timeout=10)
