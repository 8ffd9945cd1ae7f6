"""The API's listening socket: accepted connections have TCP_NODELAY.

asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP; a socket
made as ``socket(AF_INET, SOCK_STREAM)`` has proto 0, so uvicorn served on it wrote
each response's head and body as two segments and the second waited for the
client's delayed ACK (about 40 ms per sequential request, measured with W4s).
"""

from __future__ import annotations

import socket
import types

from postbell import cli


def test_accepted_connections_do_not_wait_for_delayed_acks() -> None:
    listener = cli._bind(types.SimpleNamespace(host="127.0.0.1", port=0))  # type: ignore[arg-type]
    try:
        assert listener.proto == socket.IPPROTO_TCP
        with socket.create_connection(listener.getsockname()[:2]) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert client.fileno() > 0
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
