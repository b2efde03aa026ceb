"""Reference statistics of the training rows, for the drift service.

The registry stores them as the version's ``reference_stats``::

    {"format": "tributary.reference-stats.v1", "rows": 8000,
     "features": {
        "<numeric>": {"type": "numeric", "count": 7990, "missing_rate": 0.00125, "mean": ..., "std": ...,
                      "min": ..., "max": ..., "quantiles": {"0.01": ..., ..., "0.99": ...},
                      "histogram": {"edges": [11 decile edges], "counts": [10 counts]},
                      "sample": [at most 2000 training values, drawn uniformly (the drift KS reference)]},
        "<categorical>": {"type": "categorical", "count": ..., "missing_rate": ...,
                          "frequencies": {"north": 0.41, ...}}},
     "label": {...same shape, by the label's type...},
     "input_contract": {...see trainer.contract...}}

Histogram edges are the deciles of the training values, so each bin holds about a tenth of the
reference (the usual binning for PSI); values outside the edges fall in the outer bins.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from schemas.dataset import DatasetSpec

from trainer.contract import InputContract, category_text
from trainer.table import Example

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
SAMPLE_SIZE = 2000
"""Most training values kept per numeric feature as the drift service's KS reference sample."""


def numeric_stats(values: Sequence[object]) -> dict[str, Any]:
    """Statistics of numeric ``values`` (None and non-numbers count as missing).

    >>> s = numeric_stats([1.0, 2.0, 3.0, None])
    >>> s["count"], s["missing_rate"], s["mean"], s["histogram"]["counts"][-1], sorted(s["sample"])
    (3, 0.25, 2.0, 1, [1.0, 2.0, 3.0])
    """
    total = len(values)
    x = np.array([float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)],
                 dtype=np.float64)
    x = x[np.isfinite(x)]
    out: dict[str, Any] = {"type": "numeric", "count": len(x),
                           "missing_rate": float(1 - len(x) / total) if total else 0.0}
    if len(x) == 0:
        return out
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 11)))
    counts = np.histogram(x, bins=edges)[0] if len(edges) > 1 else np.array([len(x)])
    out |= {
        "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
        "quantiles": {f"{q:g}": float(np.quantile(x, q)) for q in QUANTILES},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        # A fixed seed: the same training rows give the same statistics (and registry metadata).
        "sample": [float(v) for v in (x if len(x) <= SAMPLE_SIZE else
                                      np.random.default_rng(0).choice(x, SAMPLE_SIZE, replace=False))],
    }
    return out


def categorical_stats(values: Sequence[object]) -> dict[str, Any]:
    """Category frequencies of ``values`` (shares of the non-missing values, most frequent first).

    >>> categorical_stats(["a", "b", "a", None])["frequencies"]
    {'a': 0.6666666666666666, 'b': 0.3333333333333333}
    """
    total = len(values)
    present = [category_text(v) for v in values if v is not None]
    counts = Counter(present)
    return {
        "type": "categorical", "count": len(present),
        "missing_rate": float(1 - len(present) / total) if total else 0.0,
        "frequencies": {k: c / len(present) for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))},
    }


def reference_stats(rows: Sequence[Example], spec: DatasetSpec, contract: InputContract) -> dict[str, Any]:
    """The reference statistics of every feature and the label over ``rows``."""
    features: dict[str, Any] = {}
    for feature in spec.features:
        values = [r.features.get(feature.name) for r in rows]
        features[feature.name] = numeric_stats(values) if feature.type == "numeric" else categorical_stats(values)
    labels = [r.label for r in rows]
    label = numeric_stats(labels) if spec.label.type == "regression" else categorical_stats(labels)
    return {"format": "tributary.reference-stats.v1", "rows": len(rows), "features": features, "label": label,
            "input_contract": contract.model_dump(mode="json")}
