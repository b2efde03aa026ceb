"""Validation of untrusted ONNX in a child process with resource limits (reliability plan S4).

Parsing, checking and test-running an uploaded model exercises onnx and onnxruntime on bytes an
uploader chose; a crafted file may exhaust memory, spin, or crash the native code. The registry
therefore validates in a separate Python process that limits itself (address space and CPU
time, ``setrlimit``) and leaves the network (a fresh, empty network namespace: no interface but a
loopback that is down) before it imports onnx, and waits for it with a deadline. Whatever happens
to the child (a refusal, a crash, a kill by a limit or by the deadline) becomes an
``InvalidModel`` answer; the registry process is never at risk.

Network isolation needs ``unshare(CLONE_NEWNET)``: root or ``CAP_SYS_ADMIN``, or an unprivileged
user namespace where the kernel allows them. Where neither is possible (a container under the
default seccomp profile) the child keeps the parent's network, says so in its answer, and the
registry logs a warning; the other limits hold either way.

Protocol: the parent writes one JSON request on the child's stdin and reads one JSON line from
its stdout (``python -m registry.sandbox``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.domain import Signature
from registry.errors import InvalidModel, OpsetNotAllowed, SignatureMismatch

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

_ERRORS: dict[str, type[InvalidModel]] = {c.__name__: c for c in (InvalidModel, OpsetNotAllowed, SignatureMismatch)}


@dataclass(frozen=True)
class SandboxLimits:
    """What the validation process may use."""

    memory_bytes: int = 2 * 1024 * 1024 * 1024
    """Address space (``RLIMIT_AS``): the interpreter, onnx and onnxruntime need about 0.5 GiB."""
    cpu_s: int = 60
    """CPU seconds (``RLIMIT_CPU``) before the kernel stops the process."""
    timeout_s: float = 120.0
    """Wall-clock deadline (a model sleeping or blocked is killed too)."""


@dataclass(frozen=True)
class SandboxResult:
    """What the child learnt of a valid model (``registry.validation.ValidatedModel`` in JSON)."""

    opset: int
    signature: Signature
    network: str = "isolated"
    """``isolated``, or why the child kept the registry's network."""


def validate_in_sandbox(path: Path, *, declared: Signature, min_opset: int, max_opset: int,
                        limits: SandboxLimits) -> SandboxResult:
    """``registry.validation.validate_model`` of ``path``, run in a limited child process.

    Raises:
        InvalidModel (or OpsetNotAllowed, SignatureMismatch): refused by validation, or the
            child died or ran out of time (the message says which limit).

    """
    request = json.dumps({"path": str(path), "declared": declared.model_dump(mode="json"),
                          "min_opset": min_opset, "max_opset": max_opset,
                          "memory_bytes": limits.memory_bytes, "cpu_s": limits.cpu_s})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "PGPASSWORD"))}
    env["OMP_NUM_THREADS"] = "1"
    try:
        done = subprocess.run([sys.executable, "-m", "registry.sandbox"], input=request, capture_output=True,
                              text=True, timeout=limits.timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InvalidModel(f"validating the model took longer than {limits.timeout_s:.0f} s and was stopped; "
                           "the model is too slow to load or run a test batch") from exc
    answer = _answer(done.stdout)
    if answer is None:
        raise InvalidModel(_death(done.returncode, done.stderr, limits))
    network = str(answer.get("network", "unknown"))
    if network != "isolated":
        log.warning("model validation ran with the registry's network: %s", network)
    if answer["ok"]:
        return SandboxResult(opset=int(answer["opset"]), signature=Signature.model_validate(answer["signature"]),
                             network=network)
    raise _ERRORS.get(str(answer["error"]), InvalidModel)(str(answer["message"]))


def _answer(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                parsed: dict[str, Any] = json.loads(line)
            except ValueError:
                return None
            return parsed
    return None


def _death(returncode: int, stderr: str, limits: SandboxLimits) -> str:
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")[:300]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        cause = {"SIGXCPU": f"it used more than {limits.cpu_s} s of CPU",
                 "SIGKILL": "it was killed (CPU or memory limit)",
                 "SIGSEGV": "onnxruntime or onnx crashed on it"}.get(name, f"it died of {name}")
        return f"validating the model failed: {cause}; the model is refused"
    if "MemoryError" in stderr or "bad_alloc" in stderr or "Failed to allocate" in stderr:
        return (f"validating the model needed more than the sandbox's {limits.memory_bytes // (1024 * 1024)} MiB "
                f"of memory; the model is refused ({last})")
    return f"validating the model failed (exit code {returncode}): {last or 'no output'}; the model is refused"


def isolate_network() -> str:
    """Move this process into a new, empty network namespace; ``isolated`` or why it could not.

    Tried as is (root, ``CAP_SYS_ADMIN``), then inside a new user namespace (unprivileged). Must
    run while the process has one thread (a user namespace refuses a threaded process).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    errors = []
    for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if libc.unshare(flags) == 0:
            return "isolated"
        errors.append(os.strerror(ctypes.get_errno()))
    return f"shared (unshare of the network namespace refused: {'; '.join(dict.fromkeys(errors))})"


def _child() -> None:
    """Limit this process, validate, and print one JSON answer line."""
    network = isolate_network()
    request = json.loads(sys.stdin.read())
    memory, cpu = int(request["memory_bytes"]), int(request["cpu_s"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from registry.validation import validate_model  # imported only once limited

    try:
        result = validate_model(Path(request["path"]), declared=Signature.model_validate(request["declared"]),
                                min_opset=int(request["min_opset"]), max_opset=int(request["max_opset"]))
    except InvalidModel as exc:
        answer: dict[str, Any] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    except MemoryError:
        answer = {"ok": False, "error": "InvalidModel",
                  "message": f"validating the model needed more than the sandbox's {memory // (1024 * 1024)} MiB "
                             "of memory; the model is refused"}
    else:
        answer = {"ok": True, "opset": result.opset, "signature": result.signature.model_dump(mode="json")}
    answer["network"] = network
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child()
