"""The command endpoint's refusals that need no broker."""

from __future__ import annotations

from typing import Any

import pytest
from trainer.api import CommandCreate, create_command
from trainer.errors import InvalidCommand


@pytest.mark.parametrize("bounds", [{"partition": 2**31, "end_offset": 5}, {"partition": 0, "end_offset": 2**63}])
async def test_offsets_beyond_kafkas_range_are_refused_not_a_server_error(bounds: dict[str, Any]) -> None:
    # found by schemathesis: a 65-bit offset used to reach the codec and fail with a 500
    body = CommandCreate.model_validate({"model_name": "m", "dataset": "d",
                                         "offsets": [{"topic": "t", "start_offset": 0, **bounds}]})
    with pytest.raises(InvalidCommand, match="beyond Kafka's range"):
        await create_command(body, producer=None, settings=None)  # type: ignore[arg-type]
