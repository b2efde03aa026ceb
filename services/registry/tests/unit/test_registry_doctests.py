"""The examples in the registry's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["registry.names", "registry.storage", "registry.validation", "registry.triton_repo", "registry.db",
               "registry.service"],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_settings_defaults_and_refusals(tmp_path: object) -> None:
    from pathlib import Path

    from registry.settings import Settings

    settings = Settings(data_dir=Path("/srv/registry"))
    assert settings.db_url == "sqlite:////srv/registry/registry.db"
    assert settings.artifact_root == Path("/srv/registry/artifacts")
    assert settings.triton_root == Path("/srv/registry/triton")
    assert Settings(database_url="postgresql://u@h/db").db_url == "postgresql+psycopg://u@h/db"
    with pytest.raises(ValueError, match="in-memory"):
        Settings(database_url="sqlite:///:memory:")
    with pytest.raises(ValueError, match="min_opset"):
        Settings(min_opset=20, max_opset=15)


def test_every_setting_is_documented() -> None:
    import ast
    import inspect

    from registry import settings as module

    tree = ast.parse(inspect.getsource(module))
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    body = cls.body
    fields = [n.target.id for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
              and n.target.id != "model_config"]
    documented = {
        body[i].target.id  # type: ignore[attr-defined]
        for i in range(len(body) - 1)
        if isinstance(body[i], ast.AnnAssign) and isinstance(body[i + 1], ast.Expr)
        and isinstance(body[i + 1].value, ast.Constant)  # type: ignore[attr-defined]
    }
    assert set(fields) <= documented
