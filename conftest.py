"""Session fixtures shared by every package's tests: the real services a test needs.

Each fixture uses the service named by an environment variable when it is set (an existing
stack), and otherwise starts the real thing with the project's own scripts; when that fails
the fixture fails loudly, it never skips.
"""

from __future__ import annotations

# Import the real contracts package before pytest imports schemas/tests/*: with
# --import-mode=importlib pytest would otherwise register a placeholder module under the
# same name ("schemas") for the test folder's parent.
import schemas  # noqa: F401

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.postgres", "tests.fixtures.prometheus",
                  "tests.fixtures.redis", "tests.fixtures.triton"]
