"""Give the load generator and the system under test CPUs of their own, and tell how much other work took.

On the test bed's two shared cores a Python load generator offering a few hundred requests a
second uses a good part of a core itself. Offered three times the sustainable rate (plan G4), its
own work takes the CPU from the gateway and Triton it measures, and the test measures the bed, not
the gateway's shedding. A load-test bed gives the load generator its own CPUs: :class:`CpuSplit`
pins the test process (the client) to the first CPU and the system under test (the gateway,
Triton and the backend stubs Triton starts, which inherit the affinity) to the others.

The session's other processes (Kafka, Redis, another Triton) still run where the kernel puts them:
:class:`ForeignCpu` reads how much of the system's CPUs went to anything but the system under test
(``/proc/stat`` busy time less the system's own processes' CPU time), so a run can tell a starved
bed from the system's own limits.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live descendants of ``pid`` (from each process's parent in ``/proc/<pid>/stat``)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pin(pid: int, cpus: frozenset[int], *, with_children: bool = True) -> None:
    """Pin every thread of ``pid`` (and of its descendants) to ``cpus``; threads and processes they start later
    inherit it."""
    for process in [pid, *(children(pid) if with_children else [])]:
        try:
            threads = os.listdir(f"/proc/{process}/task")
        except FileNotFoundError:
            continue
        for tid in threads:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
                os.sched_setaffinity(int(tid), cpus)


def cpu_ticks(pid: int) -> int | None:
    """Clock ticks of CPU (user + system, every thread) process ``pid`` has used; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, every thread) the processes ``pids`` and their live descendants have used."""
    ticks = (cpu_ticks(p) for p in {p for pid in pids for p in [pid, *children(pid)]})
    return sum(t for t in ticks if t is not None) / TICKS


def busy_seconds(cpus: frozenset[int]) -> float:
    """Time the CPUs ``cpus`` spent on anything but idle and I/O wait since boot (``/proc/stat``)."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values]
            total += sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return total / TICKS


@dataclass(frozen=True)
class CpuSplit:
    """The client's CPUs and the system under test's."""

    client: frozenset[int]
    system: frozenset[int]
    everything: frozenset[int]

    @classmethod
    def of_this_bed(cls) -> CpuSplit | None:
        """The first CPU this process may use for the client, the rest for the system; None with fewer than 2."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]), frozenset(cpus))

    def __str__(self) -> str:
        return f"client on CPU {sorted(self.client)}, gateway and Triton on CPU {sorted(self.system)}"


@dataclass
class ForeignCpu:
    """Share of the system's CPUs that work other than the system under test's processes used over a stretch."""

    cpus: frozenset[int]
    pids: list[int]
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> ForeignCpu:
        self._start = (os.times().elapsed, busy_seconds(self.cpus), cpu_seconds(self.pids))
        return self

    def share(self) -> float:
        """Since :meth:`start`: (busy time of the CPUs - the system's own CPU time) / (elapsed x CPUs)."""
        elapsed, busy, own = os.times().elapsed, busy_seconds(self.cpus), cpu_seconds(self.pids)
        spent = elapsed - self._start[0]
        if spent <= 0:
            return 0.0
        return max(0.0, (busy - self._start[1]) - (own - self._start[2])) / (spent * len(self.cpus))
