"""The examples in the trainer's docstrings run."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "trainer"
MODULES = ["contract", "table", "evaluation", "gate", "reference", "schedule", "window", "onnx_model"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(f"trainer.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_only_the_training_package_imports_torch() -> None:
    offenders = []
    for path in SOURCE.rglob("*.py"):
        if "training" in path.relative_to(SOURCE).parts:
            continue
        text = path.read_text()
        if "import torch" in text or "from torch" in text:
            offenders.append(str(path.relative_to(SOURCE)))
    assert offenders == []
