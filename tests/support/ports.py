"""Loopback addresses and ports for servers the tests start."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released), for a server that must
    be told its port before it starts (a sidecar process, Prometheus, Alertmanager) or for
    'nothing there' (an upstream that is down)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
