"""An HTTP reverse proxy in front of Triton that can make one model version fail or slow down.

Plan G5 (and any fault of a single version while the server stays healthy): Triton itself has no
switch to make one version answer errors or answer late, and the registry refuses a model that
fails every call. The gateway's inference calls go over Triton's HTTP endpoint
(``INFERENCE_TRITON_HTTP_URL``) through this proxy; every request is passed on unchanged, except
``POST /v2/models/<model>/versions/<version>/infer`` of a version with a fault set:

- ``error``: answered at once with HTTP 500 and Triton's error body shape, never reaching Triton;
- ``delay``: passed on after ``delay_s`` seconds;
- ``reset``: the connection is closed without an answer, as when the server serving that version
  was killed (the caller sees its connection end mid-call).

Control (on the proxy's own port, so the test needs no other channel): ``PUT /__fault`` with
``{"model": m, "version": v, "mode": "error" | "delay" | "reset" | "none", "delay_s": s}``, and
``GET /__fault`` for the faults set and the number of requests each fault took.

Run: ``python -m tests.reliability.fault_proxy --port P --upstream http://127.0.0.1:T``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

_INFER = re.compile(r"^/v2/models/([^/]+)/versions/(\d+)/infer$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "upgrade",
        "te", "trailer"}

_NOT_ADDED = ("Accept-Encoding", "User-Agent")
"""Headers the client must not add: with ``Accept-Encoding`` Triton compresses, which the caller did not ask for."""


def build(upstream: str) -> web.Application:
    """The proxy application forwarding to ``upstream`` (Triton's HTTP base URL)."""
    faults: dict[tuple[str, int], dict[str, Any]] = {}
    taken: Counter[str] = Counter()
    app = web.Application(client_max_size=256 * 1024 * 1024)

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        yield
        await app["session"].close()

    async def set_fault(request: web.Request) -> web.Response:
        body = await request.json()
        key = (str(body["model"]), int(body["version"]))
        mode = body.get("mode", "none")
        if mode not in ("error", "delay", "reset", "none"):
            return web.json_response({"error": f"unknown mode {mode!r}"}, status=400)
        if mode == "none":
            faults.pop(key, None)
        else:
            faults[key] = {"mode": mode, "delay_s": float(body.get("delay_s", 0.0))}
        return web.json_response({"faults": _listed(faults), "taken": dict(taken)})

    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response({"faults": _listed(faults), "taken": dict(taken)})

    async def forward(request: web.Request) -> web.StreamResponse:
        match = _INFER.match(request.path)
        fault = faults.get((match.group(1), int(match.group(2)))) if match and request.method == "POST" else None
        body = await request.read()
        if fault is not None:
            label = f"{match.group(1)}/{match.group(2)}:{fault['mode']}" if match else fault["mode"]
            taken[label] += 1
            if fault["mode"] == "reset":
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise web.HTTPServiceUnavailable()  # not sent: the connection is gone
            if fault["mode"] == "error":
                return web.json_response({"error": f"injected failure of {match.group(1)} version "  # type: ignore[union-attr]
                                                   f"{match.group(2)}"}, status=500)  # type: ignore[union-attr]
            await asyncio.sleep(fault["delay_s"])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(request.method, upstream + request.path_qs, data=body,
                                   headers=headers, skip_auto_headers=_NOT_ADDED) as answer:
            content = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, body=content, headers=out)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_put("/__fault", set_fault)
    app.router.add_get("/__fault", get_faults)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _listed(faults: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"model": m, "version": v, **f} for (m, v), f in sorted(faults.items())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Triton's HTTP base URL")
    args = parser.parse_args(argv)
    web.run_app(build(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
