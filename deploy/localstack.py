"""Local processes of the stack — the Kafka broker and the services — for the demo, tests and benchmarks.

Everything here starts the real thing: the broker through ``deploy/kafka.sh``, each service as
``python -m <service>`` with its settings in the environment. Each start waits until the
process answers (a readiness URL or the broker's own start-up check) and fails with the tail of
its log when it does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class StartError(RuntimeError):
    """A process of the stack did not come up; the message holds the end of its log."""


_HANDED_OUT: set[int] = set()
"""Ports :func:`free_port` gave this process: the kernel may give a just-closed port again, and two
servers started on one port (Triton's HTTP and gRPC endpoints, say) fail to start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process was not given before."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise StartError("no free TCP port on 127.0.0.1 that was not handed out before")


class Broker:
    """One real Kafka broker run by ``deploy/kafka.sh``, with its own data folder and ports."""

    def __init__(self, data_dir: Path, *, port: int | None = None, controller_port: int | None = None,
                 external_port: int | None = None, external_advertised: str | None = None) -> None:
        """A broker of ``data_dir`` on ``port`` (free ports unless given).

        ``external_port``: a second client listener that advertises ``external_advertised``
        (``host:port``, e.g. a proxy in front of it) to the clients that connect through it.
        """
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "KAFKA_DATA_DIR": str(data_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(controller_port or free_port()),
        }
        if external_port is not None:
            self.env["KAFKA_EXTERNAL_PORT"] = str(external_port)
            self.env["KAFKA_EXTERNAL_ADVERTISED"] = external_advertised or f"127.0.0.1:{external_port}"

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener."""
        return f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> None:
        done = subprocess.run([str(REPO / "deploy" / "kafka.sh"), action], env=self.env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise StartError(f"deploy/kafka.sh {action} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        """Start (formatting storage on first start) and wait until it answers."""
        self._run("start")

    def stop(self) -> None:
        """Controlled shutdown."""
        self._run("stop")


class ServiceProcess:
    """One service run as ``python -m <module>``, logging to ``log_path``."""

    def __init__(self, name: str, module: str, env: dict[str, str], *, ready_url: str, log_path: Path) -> None:
        self.name = name
        self.module = module
        self.env = {**os.environ, **env}
        self.ready_url = ready_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the process and wait until its readiness URL answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise StartError(f"{self.name} exited with {self.process.returncode} during start-up:\n"
                                 f"{self.tail()}")
            if http_ok(self.ready_url):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(f"{self.name} was not ready within {timeout_s}s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        """The last lines of the log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
