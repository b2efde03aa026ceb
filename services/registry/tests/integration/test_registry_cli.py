"""The CLI against a real registry served by uvicorn on loopback, and its direct database commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
import uvicorn
from registry import cli
from registry.app import create_app
from registry.settings import Settings

from deploy.localstack import free_port

pytestmark = pytest.mark.integration



@pytest.fixture
def served(settings: Settings, wait_for: Callable[..., None]) -> Iterator[str]:
    """The registry served over HTTP by uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
    assert thread.is_alive(), "the registry did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI's direct database commands at the test database."""
    monkeypatch.setenv("REGISTRY_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("REGISTRY_DATA_DIR", str(settings.data_dir))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tokens_list_show_promote_rollback_history(
    env: None, served: str, capsys: pytest.CaptureFixture[str], make_onnx: Callable[..., bytes],
    spec_json: Callable[..., str],
) -> None:
    import httpx

    code, out, _ = _run(capsys, "migrate")
    assert code == 0 and "newest schema" in out
    code, trainer, _ = _run(capsys, "tokens", "create", "--name", "ci", "--role", "trainer")
    assert code == 0 and trainer.strip().startswith("trb_")
    code, operator, _ = _run(capsys, "tokens", "create", "--name", "ops", "--role", "operator")
    operator, trainer = operator.strip(), trainer.strip()
    for seed in range(2):
        response = httpx.post(f"{served}/v1/models/fraud/versions", headers={"Authorization": f"Bearer {trainer}"},
                              files={"artifact": ("m.onnx", make_onnx(seed=seed), "application/octet-stream")},
                              data={"metadata": spec_json()})
        assert response.status_code == 201, response.text

    base = ["--url", served, "--token", operator]
    code, out, _ = _run(capsys, *base, "promote", "fraud", "1", "--reason", "first")
    assert code == 0 and "fraud champion: v- -> v1 (first)" in out
    code, out, _ = _run(capsys, *base, "promote", "fraud", "2", "--reason", "better auc")
    assert code == 0 and "v1 -> v2" in out
    code, out, _ = _run(capsys, *base, "promote", "fraud", "2", "--alias", "canary", "--weight", "0.2", "--reason", "x")
    assert code == 0
    code, out, _ = _run(capsys, "--url", served, "list")
    assert code == 0 and "fraud" in out and "champion=v2" in out and "canary=v2 (20%)" in out
    code, out, _ = _run(capsys, "--url", served, "show", "fraud", "--version", "2")
    assert code == 0 and json.loads(out)["version"] == 2
    code, out, _ = _run(capsys, "--url", served, "show", "fraud")
    assert json.loads(out)["aliases"]["champion"]["version"] == 2
    code, out, _ = _run(capsys, *base, "rollback", "fraud", "--reason", "regression")
    assert code == 0 and "v2 -> v1 (rollback: regression)" in out
    code, out, _ = _run(capsys, "--url", served, "history", "fraud", "--alias", "champion")
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "by ops: rollback: regression" in lines[-1]

    # Refusals: exit 1 with the registry's reason.
    code, _, err = _run(capsys, "--url", served, "--token", trainer, "promote", "fraud", "1", "--reason", "r")
    assert code == 1 and "HTTP 403" in err and "operator" in err
    code, _, err = _run(capsys, *base, "promote", "fraud", "9", "--reason", "r")
    assert code == 1 and "HTTP 404" in err
    code, _, err = _run(capsys, "--url", served, "promote", "fraud", "1", "--reason", "r")
    assert code == 1 and "HTTP 401" in err

    code, out, _ = _run(capsys, "tokens", "revoke", "--name", "ops")
    assert code == 0 and "revoked 1" in out
    code, _, err = _run(capsys, *base, "promote", "fraud", "1", "--reason", "r")
    assert code == 1 and "HTTP 401" in err


def test_unreachable_registry_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--url", f"http://127.0.0.1:{free_port()}", "list")
    assert code == 1 and "could not be reached" in err
