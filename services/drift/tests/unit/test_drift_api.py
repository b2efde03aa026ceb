"""The drift API's OpenAPI document declares every error it answers, with the body it sends."""

from __future__ import annotations

import json

from drift.api import ErrorPublic, on_drift_error
from drift.app import create_app
from drift.errors import ReportNotFound, UnknownDataset
from drift.settings import Settings
from prometheus_client import CONTENT_TYPE_LATEST


async def test_every_error_answer_is_declared_with_its_body() -> None:
    doc = create_app(Settings(log_json=False)).openapi()
    error = {"$ref": "#/components/schemas/ErrorPublic"}
    for path in ("/v1/drift/reports", "/v1/drift/reports/{report_id}"):
        answers = doc["paths"][path]["get"]["responses"]
        assert answers["404"]["content"]["application/json"]["schema"] == error, path
        assert "422" in answers, path
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]
    for exc, code in ((UnknownDataset("no drift state for dataset 'x'"), 404), (ReportNotFound("no"), 404)):
        response = await on_drift_error(None, exc)  # type: ignore[arg-type]
        assert response.status_code == code
        ErrorPublic.model_validate(json.loads(bytes(response.body)))
