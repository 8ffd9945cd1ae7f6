"""Small helpers for local peers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that was free a moment ago (servers that refuse port 0 need one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
