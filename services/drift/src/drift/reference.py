"""Reference statistics of a champion: their format, parsing (tolerant of gaps) and the registry client.

The trainer uploads ``reference_stats`` with every model version (registry README); this
module is the one reader of that JSON. The format (``tributary.reference-stats.v1``, see the
drift README) is, per feature: ``type``, ``count``, ``missing_rate``, ``min``/``max`` and, for
numeric features, any of ``sample`` (a uniform sample of training values, the KS reference),
``quantiles`` (values at evenly spaced probabilities 0..1; the KS reference when there is no
sample, and the PSI bins) and ``histogram`` (``edges`` and ``counts``; PSI bins); for
categorical ones ``frequencies``. ``prediction`` has the same shape for the model's output, and
``error_rate`` is the validation error. Anything missing or malformed only turns the tests
that needed it off (and says so in ``problems``); a version with no reference at all still
gets the data-quality and concept-drift tests, and the distribution tests on a reference
bootstrapped from the first full window when the service is configured to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from drift.errors import ReferenceUnavailable
from drift.stats import BinGrid, KsGrid, frequencies

FORMAT = "tributary.reference-stats.v1"
PREDICTION = "__prediction__"
"""Feature name the prediction tests report under."""
ERROR_RATE = "__error_rate__"
"""Feature name the concept-drift tests report under."""


@dataclass(frozen=True, slots=True)
class NumericReference:
    """A numeric feature's reference: the KS grid and the PSI bins (either may be absent)."""

    ks: KsGrid | None
    bins: BinGrid | None
    count: int
    missing_rate: float
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class CategoricalReference:
    """A categorical feature's reference frequencies."""

    frequencies: dict[str, float]
    count: int
    missing_rate: float


FeatureReference = NumericReference | CategoricalReference


@dataclass(frozen=True, slots=True)
class Reference:
    """The parsed reference of one model version (or of a bootstrapped window)."""

    model_name: str | None
    version: int | None
    source: Literal["registry", "bootstrap", "none"]
    features: dict[str, FeatureReference] = field(default_factory=dict)
    prediction: FeatureReference | None = None
    error_rate: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """True when at least one distribution test has something to compare with."""
        return bool(self.features) or self.prediction is not None


def parse_reference(raw: Mapping[str, Any] | None, *, model_name: str | None = None, version: int | None = None,
                    source: Literal["registry", "bootstrap"] = "registry", psi_bins: int = 10) -> Reference:
    """Parse reference statistics; never raises on bad content, it reports it in ``problems``.

    Accepts the documented shape (``{"features": {...}, "prediction": ..., "error_rate": ...}``)
    and, leniently, a bare mapping of feature name to statistics.

    Examples:
        >>> ref = parse_reference({"features": {"x": {"type": "numeric", "sample": [1, 2, 3]},
        ...                                     "c": {"type": "categorical", "frequencies": {"a": 1}},
        ...                                     "m": {"mean": 0.1, "std": 1.0}}})
        >>> sorted(ref.features), ref.problems
        (['c', 'x'], ["feature 'm': no sample, quantiles, histogram or frequencies; distribution tests off"])

    """
    if not raw:
        return Reference(model_name, version, "none", problems=["no reference statistics"])
    problems: list[str] = []
    body = raw.get("features") if isinstance(raw.get("features"), Mapping) else {
        k: v for k, v in raw.items() if isinstance(v, Mapping) and k != "prediction"}
    features: dict[str, FeatureReference] = {}
    for name, stats in (body or {}).items():
        parsed = _feature(str(name), stats, psi_bins, problems)
        if parsed is not None:
            features[str(name)] = parsed
    prediction = None
    if isinstance(raw.get("prediction"), Mapping):
        prediction = _feature(PREDICTION, raw["prediction"], psi_bins, problems)
    error_rate = _float(raw.get("error_rate"))
    return Reference(model_name, version, source, features, prediction, error_rate, dict(raw), problems)


def _feature(name: str, stats: Any, psi_bins: int, problems: list[str]) -> FeatureReference | None:
    if not isinstance(stats, Mapping):
        problems.append(f"feature {name!r}: statistics are not an object")
        return None
    count = int(_float(stats.get("count")) or 0)
    missing = _float(stats.get("missing_rate")) or 0.0
    kind = stats.get("type")
    try:
        if kind == "categorical" or (kind is None and isinstance(stats.get("frequencies"), Mapping)):
            freqs = stats.get("frequencies")
            if not isinstance(freqs, Mapping) or not freqs:
                problems.append(f"feature {name!r}: categorical without frequencies; distribution tests off")
                return None
            return CategoricalReference({str(k): float(v) for k, v in freqs.items()}, count, missing)
        sample = _floats(stats.get("sample"))
        quantiles = _floats(stats.get("quantiles"))
        histogram = stats.get("histogram") if isinstance(stats.get("histogram"), Mapping) else None
        ks_source = sample if sample.size else quantiles
        ks = KsGrid(ks_source) if ks_source.size else None
        bins: BinGrid | None = None
        if histogram is not None:
            edges, counts = _floats(histogram.get("edges")), _floats(histogram.get("counts"))
            if edges.size >= 2 and counts.size == edges.size - 1:
                bins = BinGrid(edges[1:-1], counts)
            else:
                problems.append(f"feature {name!r}: histogram needs n+1 edges for n counts; ignored")
        if bins is None and ks_source.size:
            bins = BinGrid.from_sample(ks_source, bins=psi_bins)
        if ks is None and bins is None:
            problems.append(f"feature {name!r}: no sample, quantiles, histogram or frequencies; "
                            "distribution tests off")
            return None
        lo = _float(stats.get("min"))
        hi = _float(stats.get("max"))
        if ks_source.size:
            lo = float(ks_source.min()) if lo is None else lo
            hi = float(ks_source.max()) if hi is None else hi
        return NumericReference(ks, bins, count or int(ks_source.size), missing, lo, hi)
    except (TypeError, ValueError) as exc:
        problems.append(f"feature {name!r}: {exc}; distribution tests off")
        return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _floats(value: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return np.zeros(0)
    arr = np.asarray([v for v in value if isinstance(v, int | float) and not isinstance(v, bool)], np.float64)
    return arr[np.isfinite(arr)]


def stats_from_sample(numeric: Mapping[str, Sequence[float]], categorical: Mapping[str, Sequence[str]], *,
                      counts: Mapping[str, int] | None = None, max_sample: int = 2000,
                      prediction: Sequence[float] | Sequence[str] | None = None,
                      error_rate: float | None = None) -> dict[str, Any]:
    """Reference statistics in the documented format, computed from raw values.

    Used to bootstrap a reference from a window, by tests and the benchmark, and it is what a
    trainer can call (in spirit) to produce the format: ``counts`` gives the number of events
    per feature, so ``missing_rate = 1 - len(values) / count``.
    """
    features: dict[str, Any] = {}
    for name, values in numeric.items():
        features[name] = _numeric_stats(values, (counts or {}).get(name), max_sample)
    for name, cats in categorical.items():
        total = (counts or {}).get(name) or len(cats)
        features[name] = {"type": "categorical", "count": total,
                          "missing_rate": 1 - len(cats) / total if total else 0.0,
                          "frequencies": frequencies(cats)}
    out: dict[str, Any] = {"format": FORMAT, "features": features}
    if prediction is not None and len(prediction):
        if all(isinstance(p, str) for p in prediction):
            out["prediction"] = {"type": "categorical", "count": len(prediction),
                                 "frequencies": frequencies([str(p) for p in prediction])}
        else:
            out["prediction"] = _numeric_stats([float(p) for p in prediction], None, max_sample)
    if error_rate is not None:
        out["error_rate"] = error_rate
    return out


def _numeric_stats(values: Sequence[float], count: int | None, max_sample: int) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    total = count or int(arr.size)
    stats: dict[str, Any] = {"type": "numeric", "count": total,
                             "missing_rate": 1 - arr.size / total if total else 0.0}
    if arr.size:
        sample = arr if arr.size <= max_sample else np.random.default_rng(0).choice(arr, max_sample, replace=False)
        stats.update(min=float(arr.min()), max=float(arr.max()), mean=float(arr.mean()), std=float(arr.std()),
                     quantiles=[float(q) for q in np.quantile(arr, np.linspace(0, 1, 101))],
                     sample=[float(v) for v in sample])
    return stats


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What the drift service needs of a registered version."""

    model_name: str
    version: int
    dataset: str | None
    reference_stats: dict[str, Any] | None


class RegistryClient:
    """Reads versions and the champion alias from the model registry's HTTP API."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def version(self, model_name: str, version: int) -> VersionInfo:
        """One version's dataset and reference statistics.

        Raises:
            ReferenceUnavailable: the registry did not answer, or has no such version.

        """
        return await self._get(f"/v1/models/{model_name}/versions/{version}", model_name)

    async def champion(self, model_name: str) -> VersionInfo | None:
        """The version the ``champion`` alias points at, or None when it points nowhere.

        Raises:
            ReferenceUnavailable: the registry did not answer.

        """
        try:
            return await self._get(f"/v1/models/{model_name}/aliases/champion/version", model_name)
        except ReferenceUnavailable as exc:
            if exc.status == 404:
                return None
            raise

    async def _get(self, path: str, model_name: str) -> VersionInfo:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise ReferenceUnavailable(f"registry request {path} failed: {exc}; the reference is kept as it "
                                       "was and refreshed on the next registry event") from exc
        if response.status_code != 200:
            raise ReferenceUnavailable(f"registry answered {response.status_code} to {path}: "
                                       f"{response.text[:200]}", status=response.status_code)
        body = response.json()
        stats = body.get("reference_stats")
        return VersionInfo(model_name=str(body.get("model_name", model_name)), version=int(body["version"]),
                           dataset=body.get("dataset"), reference_stats=stats if isinstance(stats, dict) else None)
