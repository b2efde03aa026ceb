"""Periodic retrain commands.

Each schedule cuts time into slots of ``every_s`` seconds. At the start of a slot the trainer
publishes one command with the id ``schedule-<model>-<slot>`` and the window of the
``window_s`` seconds before the slot start. Every replica and every restart computes the same
id, and commands are idempotent per id, so a slot trains once however many times it is issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from schemas.training import RetrainCommandV1, TrainingWindow

from trainer.service import new_command
from trainer.settings import Schedule

log = logging.getLogger(__name__)


def command_for_slot(schedule: Schedule, now: datetime) -> RetrainCommandV1:
    """The command of the slot ``now`` falls in.

    >>> s = Schedule(model_name="m", dataset="d", every_s=3600, window_s=86400)
    >>> c = command_for_slot(s, datetime(2026, 11, 1, 12, 30, tzinfo=UTC))
    >>> c.command_id, c.window.end_time.isoformat(), c.window.start_time.isoformat()
    ('schedule-m-498204', '2026-11-01T12:00:00+00:00', '2026-10-31T12:00:00+00:00')
    """
    slot = math.floor(now.timestamp() / schedule.every_s)
    end = datetime.fromtimestamp(slot * schedule.every_s, UTC)
    start = end - timedelta(seconds=schedule.window_s) if schedule.window_s else None
    return new_command(model_name=schedule.model_name, dataset=schedule.dataset, reason="schedule",
                       requested_by="trainer-schedule", command_id=f"schedule-{schedule.model_name}-{slot}",
                       window=TrainingWindow(start_time=start, end_time=end))


async def run_schedule(schedule: Schedule, publish: Callable[[RetrainCommandV1], Awaitable[None]],
                       stopping: asyncio.Event) -> None:
    """Publish one command per slot until ``stopping`` is set (publishing errors are retried next slot)."""
    while not stopping.is_set():
        now = datetime.now(UTC)
        try:
            await publish(command_for_slot(schedule, now))
        except Exception as exc:  # the next slot tries again; a missed slot is only a delay
            log.error("could not publish a scheduled command", extra={"model": schedule.model_name,
                                                                      "reason": str(exc)})
        next_slot = (math.floor(now.timestamp() / schedule.every_s) + 1) * schedule.every_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=max(0.05, next_slot - now.timestamp()))
