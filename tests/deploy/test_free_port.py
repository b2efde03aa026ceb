"""``free_port`` never hands one process the same port twice (two servers on one port fail to start)."""

from __future__ import annotations

import socket

from deploy.localstack import free_port


def test_free_port_never_repeats_within_a_process() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as s:  # each is free to bind
            s.bind(("127.0.0.1", port))
