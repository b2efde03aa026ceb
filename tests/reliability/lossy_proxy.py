"""A TCP proxy that can lose the broker's answers while every request still reaches the broker.

The fault behind plan K3's idempotence proof: a produce request is written by the broker, its
answer never comes back, the producer times the request out and sends the same records again.
Only an idempotent producer keeps the log free of duplicates then. A process freeze (SIGSTOP)
cannot show this: a frozen broker writes nothing, so a retry never meets an earlier write.

While answers are lost, every connection then open keeps losing them (a Kafka connection with
a missing answer is out of step for good); :meth:`LossyProxy.restore` closes those connections,
so the clients reconnect and retry, and new connections pass both ways again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from deploy.localstack import free_port


@dataclass
class _Link:
    """One client connection and its upstream twin."""

    client: socket.socket
    upstream: socket.socket
    losing: bool = False
    """Set once an answer of this connection was lost: it never passes answers again."""

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@dataclass
class LossyProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``; answers can be lost on demand."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    requests_while_losing: int = 0
    """Bytes of requests forwarded to the broker while answers were being lost."""
    answers_lost: int = 0
    """Bytes of answers thrown away."""
    _losing: bool = False
    _links: list[_Link] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None
    _closed: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        """``host:port`` clients connect to (and the broker advertises)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LossyProxy:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, name="lossy-proxy-accept", daemon=True).start()
        return self

    def lose_answers(self) -> None:
        """From now on, answers on every connection are thrown away (requests still pass)."""
        with self._lock:
            self._losing = True
            for link in self._links:
                link.losing = True

    def restore(self) -> None:
        """Answers pass again: the connections that lost answers are closed (clients reconnect)."""
        with self._lock:
            self._losing = False
            lossy = [link for link in self._links if link.losing]
            self._links = [link for link in self._links if not link.losing]
        for link in lossy:
            link.close()

    def stop(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                link.losing = self._losing
                self._links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._answers, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        """Client to broker: always forwarded."""
        try:
            while data := link.client.recv(65536):
                link.upstream.sendall(data)
                if link.losing:
                    with self._lock:
                        self.requests_while_losing += len(data)
        except OSError:
            pass
        link.close()

    def _answers(self, link: _Link) -> None:
        """Broker to client: forwarded unless this connection is losing answers."""
        try:
            while data := link.upstream.recv(65536):
                if link.losing:
                    with self._lock:
                        self.answers_lost += len(data)
                    continue
                link.client.sendall(data)
        except OSError:
            pass
        link.close()
