"""Schemathesis against every service's OpenAPI, in process, on the real broker, Redis and Triton.

Each app runs its real lifespan (its Kafka, database and Redis clients); schemathesis generates
requests from the app's own OpenAPI document (valid and invalid, NUL bytes and odd Unicode
included) and sends them through the ASGI interface. Pass criteria (plan B1, issue 8.3), for a
bounded number of examples per operation so the run stays within CI time: no answer is a server
error (5xx); and, for the services whose documents declare their errors, every answer conforms to
the document: a documented status code, a documented content type, a body matching the
documented schema (so a client generated from the document can read every answer).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)
from schemathesis.core.result import Ok

from tests.fixtures.triton import TritonServer

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("TRIBUTARY_SCHEMATHESIS_EXAMPLES", "25"))
SCENARIOS = int(os.environ.get("TRIBUTARY_SCHEMATHESIS_SCENARIOS", "40"))
"""Stateful scenarios (chains of calls along the document's links, each on a fresh registry): 40 in the suite."""
"""Generated requests per operation (each service has 5-20 operations): 25 in the suite, the plan's
500 with ``TRIBUTARY_SCHEMATHESIS_EXAMPLES=500`` (tests/reliability/README.md)."""


@contextmanager
def running(app: FastAPI) -> Iterator[FastAPI]:
    """The app with its lifespan started (its clients connected) for the duration."""
    with TestClient(app):
        yield app


CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance,
               negative_data_rejection, ignored_auth, unsupported_method]
"""Every answer is documented; a request the document forbids is refused with a 4xx; an operation
that declares authentication refuses a request without it; a method the path does not have is 405."""


def server_errors(app: FastAPI, *, headers: dict[str, str] | None = None, conformance: bool = False,
                  acceptance: bool = False, acceptance_except: dict[str, str] | None = None) -> list[str]:
    """Every generated request that got a 5xx, as ``METHOD path -> status: what``.

    With ``conformance``, also every answer the app's own OpenAPI does not describe and every
    forbidden request that was not refused (:data:`CONFORMANCE`). With ``acceptance``, also every
    request the document allows that was refused (other than 401/403/404/409): for APIs whose
    document states all of their input rules; ``acceptance_except`` names the operations with a
    rule no JSON Schema can state (operation label -> the rule), checked without it.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, *(CONFORMANCE if conformance else [])]
    exempt = acceptance_except or {}
    found: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the app's OpenAPI has an invalid operation: {result}"
        operation = result.ok()

        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @hypothesis.given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            accept = acceptance and case.operation.label not in exempt
            try:
                case.validate_response(response, checks=[*checks, *([positive_data_acceptance] if accept else [])],
                                       headers=headers)
            except BaseException as exc:    # schemathesis raises a group of failures
                if isinstance(exc, KeyboardInterrupt):
                    raise
                what = " ".join(str(exc).split())[:400]
                found.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {what}")

        check()
    assert calls and all(n >= 1 for n in calls.values()), calls
    print(f"{app.title}: {len(calls)} operations, {sum(calls.values())} requests, {len(found)} failures")
    for failure in found:                       # whole, for the failure report (the assertion shortens)
        print(f"  {failure}")
    return found


def test_ingest_openapi_gives_no_server_error(kafka_bootstrap: str) -> None:
    from ingest.app import create_app
    from ingest.settings import Settings

    settings = Settings(kafka_bootstrap=kafka_bootstrap, consume_raw=False, log_json=False, startup_timeout_s=60,
                        delivery_timeout_s=5)
    with running(create_app(settings)) as app:
        assert server_errors(app, conformance=True) == []


REGISTRY_RULES_BEYOND_SCHEMA = {
    "POST /v1/models/{name}/versions": "the artifact must be a valid ONNX model matching the metadata's signature",
    "PUT /v1/models/{name}/aliases/{alias}": "only the canary takes a weight, and it needs one (depends on the path)",
}
"""Registry operations whose input rules no JSON Schema states: the acceptance check skips them."""


def test_registry_openapi_gives_no_server_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    from registry.app import create_app
    from registry.domain import Role
    from registry.settings import Settings

    settings = Settings(data_dir=tmp_path, kafka_bootstrap=kafka_bootstrap,
                        model_registered_topic=f"test.registered.{uuid.uuid4().hex[:8]}",
                        rollout_changed_topic=f"test.rollout.{uuid.uuid4().hex[:8]}", max_artifact_bytes=1 << 20)
    with running(create_app(settings)) as app:
        token = app.state.service.issue_token("fuzz", [Role.TRAINER, Role.OPERATOR])
        assert server_errors(app, conformance=True) == []                                        # anonymous
        # Every role: the document states every input rule, so an allowed request is never refused.
        assert server_errors(app, headers={"Authorization": f"Bearer {token}"}, conformance=True, acceptance=True,
                             acceptance_except=REGISTRY_RULES_BEYOND_SCHEMA) == []


def test_drift_openapi_gives_no_server_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    from drift.app import create_app
    from drift.settings import Settings

    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=f"drift-fuzz-{uuid.uuid4().hex[:8]}",
                        state_dir=str(tmp_path), registry_url="http://127.0.0.1:9", log_json=False)
    with running(create_app(settings)) as app:
        assert server_errors(app, conformance=True) == []


def test_trainer_openapi_gives_no_server_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    from trainer.app import create_app
    from trainer.settings import Settings

    settings = Settings(kafka_bootstrap=kafka_bootstrap, registry_url="http://127.0.0.1:9",
                        registry_token="not-a-token", consume_commands=False, log_json=False)
    with running(create_app(settings)) as app:
        assert server_errors(app, conformance=True) == []


def test_inference_openapi_gives_no_server_error(kafka_bootstrap: str, redis_url: str, triton: TritonServer,
                                                 tmp_path: Path) -> None:
    from inference.app import create_app
    from inference.settings import Settings

    from services.inference.tests.integration.conftest import make_topics
    from services.inference.tests.onnx_models import all_versions, write_registry_model

    write_registry_model(tmp_path, "credit", all_versions())
    names: dict[str, str] = {k: f"test.{k}.{uuid.uuid4().hex[:8]}" for k in ("rollout", "requests", "responses")}
    make_topics(kafka_bootstrap, *names.values())
    settings = Settings(triton_grpc_url=triton.grpc_url, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap,
                        redis_prefix=f"fuzz-{uuid.uuid4().hex[:8]}:", grpc_port=None, canary_analysis=False,
                        rollout_topic=names["rollout"], request_topic=names["requests"],
                        response_topic=names["responses"], consume_features=False, join_labels=False,
                        model_repository=tmp_path, fallback="onnxruntime", log_json=False)
    make: Callable[[Settings], FastAPI] = create_app
    with running(make(settings)) as app:
        assert server_errors(app, conformance=True) == []


STATEFUL = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
            use_after_free, ensure_resource_availability]
"""Along chains of calls: no server error, every answer documented, a deleted resource is gone for
every later call, a created one is there for every later call."""


def test_registry_stateful_links_give_no_server_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Plan B1's stateful links: chains of registry calls that feed each answer into the next request.

    Schemathesis reads the links between operations from the document (a version's ``name`` and
    ``version`` in one answer are the path parameters of the version, artifact and alias
    operations) and generates sequences of calls along them: list models -> read a version ->
    move an alias to it -> read the alias -> roll back or delete it -> read it again. Every
    scenario starts from a fresh registry seeded with two real versions (uploads need a valid
    ONNX, which a generator does not make), so the chains reach real resources and a scenario
    replays the same way (Hypothesis requires it); the test also requires that chains followed the links
    (the seeded model's name appears in later calls) and reports how many reached a seeded version.
    """
    from registry.app import create_app
    from registry.domain import Role
    from registry.settings import Settings

    from services.registry.tests.conftest import linear_onnx, linear_spec

    def start(data_dir: Path) -> tuple[FastAPI, TestClient, dict[str, str]]:
        settings = Settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap,
                            model_registered_topic=f"test.registered.{uuid.uuid4().hex[:8]}",
                            rollout_changed_topic=f"test.rollout.{uuid.uuid4().hex[:8]}", max_artifact_bytes=1 << 20)
        app = create_app(settings)
        client = TestClient(app)
        client.__enter__()
        token = app.state.service.issue_token("fuzz", [Role.TRAINER, Role.OPERATOR])
        return app, client, {"Authorization": f"Bearer {token}"}

    seed = tmp_path / "seed"
    app, client, auth = start(seed)
    for _ in range(2):
        seeded = client.post("/v1/models/fraud/versions", headers=auth,
                             files={"artifact": ("model.onnx", linear_onnx(), "application/octet-stream")},
                             data={"metadata": json.dumps(linear_spec().model_dump(mode="json"))})
        assert seeded.status_code == 201, seeded.text
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    client.__exit__(None, None, None)

    def fresh(n: int) -> tuple[FastAPI, TestClient, dict[str, str]]:
        """A registry on a copy of the seeded one (database, artifacts, Triton repository)."""
        copy = tmp_path / f"scenario-{n}"
        shutil.copytree(seed, copy)
        return start(copy)

    calls: list[tuple[str, str, int]] = []
    found: list[str] = []
    scenarios = iter(range(1, 10_000))

    class Registry(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.app, self.client, self.auth = fresh(next(scenarios))

        def teardown(self) -> None:
            self.client.__exit__(None, None, None)

        def call(self, case: Any, **kwargs: Any) -> Any:
            return case.call(app=self.app, headers=self.auth, **kwargs)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            calls.append((case.method, case.formatted_path, response.status_code))

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=STATEFUL, headers=self.auth, recorder=self.recorder)
            except BaseException as exc:    # schemathesis raises a group of failures
                if isinstance(exc, KeyboardInterrupt):
                    raise
                what = " ".join(str(exc).split())[:400]
                found.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {what}")

    Registry.run(settings=hypothesis.settings(max_examples=SCENARIOS, stateful_step_count=8, deadline=None,
                                              derandomize=True, database=None, phases=[Phase.generate],
                                              suppress_health_check=list(HealthCheck)))
    reached = [(method, path, code) for method, path, code in calls
               if path.startswith("/v1/models/fraud/versions/") and code == 200]
    changed = sum(1 for method, _, code in calls if method != "GET" and 200 <= code < 300)
    print(f"registry stateful: {len(calls)} calls, {len(reached)} reached a seeded version, {changed} changes "
          f"accepted, {len(found)} failures")
    for failure in found:
        print(f"  {failure}")
    # The seeded model's name only comes from an earlier answer (the links): chains were followed.
    assert any(path.startswith("/v1/models/fraud/") for _, path, _ in calls), f"no chain followed a link: {calls[:50]}"
    assert found == []
