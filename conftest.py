"""Session fixtures shared by every package's tests: the real services a test needs.

Each fixture uses the service named by an environment variable when it is set (an existing
stack), and otherwise starts the real thing with the project's own scripts; when that fails
the fixture fails loudly, it never skips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

# Import the real contracts package before pytest imports schemas/tests/*: with
# --import-mode=importlib pytest would otherwise register a placeholder module under the
# same name ("schemas") for the test folder's parent.
import schemas  # noqa: F401

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.postgres", "tests.fixtures.prometheus",
                  "tests.fixtures.redis", "tests.fixtures.triton"]


@pytest.fixture(autouse=True)
async def no_lingering_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running behind it (a leaked consumer, a mirror...)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:
        lingering = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not lingering or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)  # let tasks that are already finishing finish
    for task in lingering:
        task.cancel()
    assert not lingering, f"test left asyncio tasks running: {[t.get_name() for t in lingering]}"
