"""The drift stream app with one probe agent: the worker of the K5 (faust ack gap) test.

The app is drift's own (``drift.stream.build_stream``: the same faust settings, commit policy
and agents); the probe agent is declared the way drift declares its agents (default
concurrency) on a topic of the test's. A record with value ``slow`` takes ``K5_SLOW_S`` seconds;
every record's offset is appended to ``K5_LOG`` once handled (``started <offset>`` first for the
slow one), so the test can tell what was processed across a ``kill -9`` and a restart.

Run by the test as ``python -m tests.reliability.faust_ack_gap_worker`` with ``DRIFT_*`` and
``K5_*`` in the environment.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from drift.reference import RegistryClient
from drift.settings import Settings
from drift.stream import build_stream
from faust.contrib.asgi import faust_app_running


async def main() -> None:
    """Run the app with the probe agent until killed."""
    settings = Settings()
    log = Path(os.environ["K5_LOG"])
    slow_s = float(os.environ.get("K5_SLOW_S", "20"))
    registry = RegistryClient(settings.registry_url, timeout_s=1)
    app, _ = build_stream(settings, registry=registry)
    probe_topic = app.topic(os.environ["K5_TOPIC"], key_serializer="raw", value_serializer="raw")

    async def probe(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            offset = event.message.offset
            if event.value == b"slow":
                with log.open("a") as out:
                    out.write(f"started {offset}\n")
                await asyncio.sleep(slow_s)
            with log.open("a") as out:
                out.write(f"done {offset}\n")
            yield None

    app.agent(probe_topic, name="k5_probe")(probe)
    async with faust_app_running(app, stop_timeout=10):
        (log.parent / "ready").write_text("ready")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
