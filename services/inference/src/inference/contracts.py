"""The trainer's model input contract: named features to the ``numeric`` and ``categorical`` tensors.

Models trained by the trainer carry their preprocessing inside the ONNX graph and document
their inputs in the registry version's ``reference_stats["input_contract"]`` (format
``tributary.tabular.v1``, trainer README "Model input contract"). ``/v1/predict`` builds the
tensors from it:

* ``numeric`` — FP32 ``[1, len(numeric)]``: each numeric feature's value in contract order, NaN
  when missing (the graph imputes it);
* ``categorical`` — INT64 ``[1, len(categorical)]``: ``vocabulary.index(str(value)) + 1``, 0 when
  missing or unknown.

:class:`RegistryContracts` reads the contract of a version once (a version never changes).

>>> c = InputContract.parse({"format": "tributary.tabular.v1", "numeric": ["age"],
...                          "categorical": [{"name": "home", "vocabulary": ["rent", "own"]}]})
>>> [(t.name, t.datatype, t.array.tolist()) for t in c.tensors({"age": None, "home": "own"}, model="m")]
[('numeric', 'FP32', [[nan]]), ('categorical', 'INT64', [[2]])]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from inference.errors import BackendUnavailable, InvalidInput
from inference.tensors import Tensor

FORMAT = "tributary.tabular.v1"

Scalar = float | int | str | None


@dataclass(frozen=True, slots=True)
class InputContract:
    """The columns of a model's ``numeric`` and ``categorical`` inputs, in order."""

    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, Mapping[str, int]], ...]
    """Per categorical column: its name and the index of each category (vocabulary position + 1)."""

    @classmethod
    def parse(cls, raw: Any) -> InputContract:
        """A contract from its JSON.

        Raises:
            InvalidInput: not a ``tributary.tabular.v1`` contract.

        """
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
            raise InvalidInput(f"the model's input contract is not {FORMAT!r}; call /v2/models/<model>/infer with "
                               "tensors instead")
        try:
            numeric = tuple(str(n) for n in raw.get("numeric") or [])
            categorical = tuple((str(c["name"]), {str(v): i + 1 for i, v in enumerate(c["vocabulary"])})
                                for c in raw.get("categorical") or [])
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"the model's input contract is malformed ({exc}); re-register the model") from None
        return cls(numeric, categorical)

    @property
    def names(self) -> list[str]:
        """Every feature the model reads."""
        return [*self.numeric, *(name for name, _ in self.categorical)]

    def tensors(self, values: Mapping[str, Scalar], *, model: str) -> list[Tensor]:
        """The one-row input tensors for ``values`` (absent names count as missing).

        Raises:
            InvalidInput: a numeric feature holds something other than a number.

        """
        out = []
        if self.numeric:
            row = np.full((1, len(self.numeric)), np.nan, dtype=np.float32)
            for j, name in enumerate(self.numeric):
                value = values.get(name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise InvalidInput(f"feature {name!r} of model {model!r} must be a finite number, got {value!r}")
                row[0, j] = value
            out.append(Tensor("numeric", "FP32", row))
        if self.categorical:
            codes = np.zeros((1, len(self.categorical)), dtype=np.int64)
            for j, (name, index) in enumerate(self.categorical):
                value = values.get(name)
                codes[0, j] = 0 if value is None else index.get(str(value), 0)
            out.append(Tensor("categorical", "INT64", codes))
        return out


class ContractSource(Protocol):
    """Where the input contract of a model version comes from (:class:`RegistryContracts`)."""

    async def get(self, model: str, version: int) -> InputContract | None:
        """The version's contract, or None when the version has none."""
        ...


class RegistryContracts:
    """Reads ``reference_stats["input_contract"]`` of versions from the registry's HTTP API, once each."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)
        self._cache: dict[tuple[str, int], InputContract | None] = {}

    async def get(self, model: str, version: int) -> InputContract | None:
        """The contract of ``model`` version ``version`` (None: the version has none).

        Raises:
            BackendUnavailable: the registry did not answer (nothing is cached; the next call asks again).
            InvalidInput: the contract is malformed.

        """
        key = (model, version)
        if key in self._cache:
            return self._cache[key]
        path = f"/v1/models/{model}/versions/{version}"
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"the registry did not answer {path} ({exc}); the model's input contract is "
                                     "needed for named features; retry shortly") from exc
        if response.status_code == 404:
            found = None
        elif response.status_code != 200:
            raise BackendUnavailable(f"the registry answered {response.status_code} to {path}; retry shortly")
        else:
            stats = response.json().get("reference_stats")
            raw = stats.get("input_contract") if isinstance(stats, Mapping) else None
            found = None if raw is None else InputContract.parse(raw)
        self._cache[key] = found
        return found

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
