"""The open-loop load client of the gateway's fault tests, and how its answers are judged.

:class:`PacedLoad` offers one-row v2 infer requests at a fixed rate, as the plan's offered load:
a slow answer never delays the next request (each request is its own task on one asyncio
client, in a thread of its own). When the client itself falls more than 50 ms behind its
schedule (a CPU-starved test process) it skips the missed slots rather than sending them in a
burst, and records them: a latency criterion cannot be judged on a bed where the caller could
not even keep its schedule (:func:`judge_answer_times`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import httpx
import pytest

from services.inference.tests.integration.conftest import MODEL, v2_body
from tests.reliability.processes import CpuWait

LATE_S = 0.05
"""How far behind its schedule the client may fall before it skips slots."""


@dataclass
class Answer:
    """One request to the gateway: when it started, how long it took, and what came back."""

    started: float
    seconds: float
    status: int
    retry_after: str | None
    body: str
    backend: str | None = None
    """``X-Tributary-Backend``: which backend answered (``triton`` or the fallback)."""
    version: str | None = None
    """``X-Tributary-Model-Version``."""
    route: str | None = None
    """``X-Tributary-Route``."""


@dataclass
class PacedLoad:
    """``rate`` one-row requests a second to ``url``'s v2 infer route on a fixed schedule, every answer recorded.

    Args:
        url: the gateway's base URL.
        rate: requests a second.
        entities: when > 0, each request names entity ``e-<n % entities>`` (sticky canary routing).
        client: ``httpx`` or ``aiohttp`` (about 0.25 ms of CPU a request against httpx's 4 ms:
            the one to use where the client's own CPU decides whether the load is really offered).
        max_connections: the client's connection pool.
        model: the model asked (the suite's ``credit`` unless a test serves its own).

    """

    url: str
    rate: float = 100.0
    model: str = MODEL
    entities: int = 0
    client: Literal["httpx", "aiohttp"] = "httpx"
    max_connections: int = 256
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped_slots: list[float] = field(default_factory=list)
    """The slots the client skipped (monotonic times), more than :data:`LATE_S` behind its schedule."""
    lags: list[float] = field(default_factory=list)
    """How late each request was sent against its slot, in seconds."""
    native_id: int = 0
    """The OS thread id of the client's event loop (for its run-queue time)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def skipped(self) -> int:
        """Slots skipped so far."""
        return len(self.skipped_slots)

    def skipped_between(self, t0: float, t1: float) -> int:
        """Slots skipped in ``[t0, t1)``."""
        return sum(t0 <= s < t1 for s in self.skipped_slots)

    def _record(self, t0: float, status: int, headers: object, text: str) -> None:
        get = headers.get  # type: ignore[attr-defined]
        answer = Answer(t0, time.monotonic() - t0, status, get("retry-after"), text[:300],
                        get("x-tributary-backend"), get("x-tributary-model-version"), get("x-tributary-route"))
        with self._lock:
            self.answers.append(answer)

    def _headers(self, n: int) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.entities > 0:
            headers["x-tributary-entity"] = f"e-{n % self.entities}"
        return headers

    async def _one_httpx(self, client: httpx.AsyncClient, body: bytes, n: int) -> None:
        t0 = time.monotonic()
        try:
            r = await client.post(f"{self.url}/v2/models/{self.model}/infer", content=body, headers=self._headers(n))
        except httpx.HTTPError as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        self._record(t0, r.status_code, r.headers, r.text)

    async def _one_aiohttp(self, session: aiohttp.ClientSession, body: bytes, n: int) -> None:
        t0 = time.monotonic()
        try:
            url = f"{self.url}/v2/models/{self.model}/infer"
            async with session.post(url, data=body, headers=self._headers(n)) as r:
                text = await r.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        self._record(t0, r.status, r.headers, text)

    async def _main(self) -> None:
        self.native_id = threading.get_native_id()
        body = json.dumps(v2_body([[1.0, 2.0, 3.0, 4.0]])).encode()
        # The client timeout is far above any deadline of the gateway: a hang shows as a long answer.
        if self.client == "aiohttp":
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                             connector=aiohttp.TCPConnector(limit=self.max_connections)) as session:
                await self._schedule(lambda n: self._one_aiohttp(session, body, n))
        else:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                await self._schedule(lambda n: self._one_httpx(client, body, n))

    async def _schedule(self, send: object) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            slot = start + n / self.rate
            behind = time.monotonic() - slot
            if behind > LATE_S:
                missed = int(behind * self.rate)
                self.skipped_slots += [start + (n + i) / self.rate for i in range(missed)]
                n += missed
                continue
            if behind < 0:
                await asyncio.sleep(-behind)
            self.lags.append(time.monotonic() - slot)
            task = asyncio.create_task(send(n))  # type: ignore[operator]
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks)

    def start(self) -> PacedLoad:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="paced-load", daemon=True)
        self._thread.start()
        return self

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.started >= t]

    def between(self, t0: float, t1: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if t0 <= a.started < t1]

    def __str__(self) -> str:
        with self._lock:
            seen = {a.status: a.body for a in self.answers}
        return f"{len(self.answers)} answers, {len(self.failures)} failures {self.failures[:2]}, by status {seen}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)


def own_seconds(answer: Answer, cpu: CpuWait) -> float:
    """An answer's time on the gateway's account: less the time the gateway's event loop and the caller's
    waited for a CPU meanwhile (run-queue time; on two shared cores other processes decide that)."""
    return max(0.0, answer.seconds - cpu.waited(answer.started, answer.started + answer.seconds))


def status_summary(answers: list[Answer]) -> str:
    """Statuses with a count and one body each, for a failure message."""
    counts: dict[int, int] = {}
    bodies: dict[int, str] = {}
    for a in answers:
        counts[a.status] = counts.get(a.status, 0) + 1
        bodies.setdefault(a.status, a.body)
    return f"{len(answers)} answers, " + ", ".join(f"{s} x{n}: {bodies[s]!r}" for s, n in sorted(counts.items()))


def judge_answer_times(problem: str | None, load: PacedLoad) -> None:
    """Fail on ``problem``; an expected failure instead when the caller itself could not keep its schedule.

    The caller skips the slots it is more than 50 ms late for. When it skipped more than a tenth
    of them, the test bed was starved of CPU (other work on the two cores) past what a test's
    CPU-wait accounting subtracts, and the answer times cannot be judged (plan 6.4: a latency
    failure on two cores may be capacity; run again, or at a lower rate). Called last, after
    everything else was checked.
    """
    if problem is None:
        return
    slots = len(load.answers) + load.skipped
    if load.skipped > 0.1 * slots:
        pytest.xfail(f"the caller could not keep its schedule ({load.skipped} of {slots} slots skipped): the test "
                     f"bed is starved of CPU and the answer times were not judged; {problem}")
    pytest.fail(problem, pytrace=False)
