"""The model registry over HTTP: versions (trainer token), aliases (operator token), artifacts.

Refusals (4xx) become :class:`RegistryRefused` with the registry's own message; failures to
reach it (connection errors, timeouts, 5xx) become :class:`RegistryUnavailable`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from tributary_kit.telemetry import current_traceparent

from trainer.errors import RegistryRefused, RegistryUnavailable
from trainer.signing import ArtifactSigner


class RegistryClient:
    """A small synchronous client of the registry's ``/v1`` API."""

    def __init__(self, base_url: str, *, trainer_token: str, operator_token: str, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None, signer: ArtifactSigner | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)
        self._signer = signer
        self._trainer = {"Authorization": f"Bearer {trainer_token}"}
        self._operator = {"Authorization": f"Bearer {operator_token}"}

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, *, allow_404: bool = False, **kwargs: Any) -> httpx.Response | None:
        traceparent = current_traceparent()
        if traceparent:  # the registry's spans (and the events it publishes) continue the command's trace
            kwargs["headers"] = {**kwargs.get("headers", {}), "traceparent": traceparent}
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"the registry at {self._http.base_url} did not answer {method} {path}: "
                                      f"{exc!r}; check TRAINER_REGISTRY_URL and that the registry runs") from exc
        if response.status_code == 404 and allow_404:
            return None
        if response.status_code >= 500:
            raise RegistryUnavailable(f"the registry failed {method} {path}: {response.status_code} "
                                      f"{response.text[:500]}")
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body.get('code', '')}: {body.get('error', '')}"
            except ValueError:
                message = response.text[:500]
            raise RegistryRefused(f"the registry refused {method} {path} ({response.status_code} {message})",
                                  status=response.status_code)
        return response

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version of ``model``, oldest first (empty when the model does not exist)."""
        response = self._call("GET", f"/v1/models/{model}/versions", allow_404=True)
        if response is None:
            return []
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def version_for_command(self, model: str, command_id: str) -> dict[str, Any] | None:
        """The version registered for ``command_id`` (recorded in its params), if any."""
        for version in self.versions(model):
            if version.get("params", {}).get("command_id") == command_id:
                return version
        return None

    def register(self, model: str, artifact: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
        """Register the next version of ``model``; the registry validates the ONNX against ``metadata``.

        With a signer, the upload carries the artifact's signature (see :mod:`trainer.signing`).
        """
        data = {"metadata": json.dumps(metadata)}
        if self._signer is not None:
            data["signature"] = self._signer.sign(model, artifact).model_dump_json()
        response = self._call("POST", f"/v1/models/{model}/versions", headers=self._trainer, data=data,
                              files={"artifact": ("model.onnx", artifact, "application/octet-stream")})
        assert response is not None
        version: dict[str, Any] = response.json()
        return version

    def version(self, model: str, version: int) -> dict[str, Any]:
        """One version with its lineage."""
        response = self._call("GET", f"/v1/models/{model}/versions/{version}")
        assert response is not None
        body: dict[str, Any] = response.json()
        return body

    def artifact(self, model: str, version: int) -> bytes:
        """The ONNX bytes of a version."""
        response = self._call("GET", f"/v1/models/{model}/versions/{version}/artifact")
        assert response is not None
        return response.content

    def alias(self, model: str, alias: str) -> dict[str, Any] | None:
        """Where ``alias`` points (version, weight, who, why), or None when it is not set."""
        response = self._call("GET", f"/v1/models/{model}/aliases/{alias}", allow_404=True)
        if response is None:
            return None
        body: dict[str, Any] = response.json()
        return body

    def set_alias(self, model: str, alias: str, version: int, *, reason: str, weight: float | None = None) -> None:
        """Point ``alias`` at ``version`` (operator token)."""
        body: dict[str, Any] = {"version": version, "reason": reason[:4000]}
        if weight is not None:
            body["weight"] = weight
        self._call("PUT", f"/v1/models/{model}/aliases/{alias}", headers=self._operator, json=body)

    def remove_alias(self, model: str, alias: str, *, reason: str) -> None:
        """Make ``alias`` point nowhere (operator token)."""
        self._call("DELETE", f"/v1/models/{model}/aliases/{alias}", headers=self._operator,
                   params={"reason": reason[:4000]}, allow_404=True)
