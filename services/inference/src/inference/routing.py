"""Pure routing: which version answers a request, given a model's rollout and the caller's key.

Canary routing is sticky: the key (an entity id) is hashed to a point in ``[0, 1)`` and the
request goes to the canary when that point is below the canary's weight. A caller keeps its
version for as long as the weight does not move, and when the weight only grows (5% → 25%) a
caller already on the canary stays there. The same function serves REST, gRPC and Kafka, so
one entity sees one version whatever the transport.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Route = Literal["champion", "canary", "pinned"]
"""How a request's version was chosen: the champion, the canary, or named by the caller."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """The rollout of one model: who serves, who is tried, who is mirrored.

    Attributes:
        model: the model name.
        champion: the version answering most traffic (None: nothing serves yet).
        canary: the version under trial, or None.
        canary_weight: the canary's share of traffic in ``[0, 1]``.
        shadow: the version every request is mirrored to (answers are compared, never returned).
        revision: increases with every change; operators and the analysis compare-and-set on it.

    """

    model: str
    champion: int | None = None
    canary: int | None = None
    canary_weight: float = 0.0
    shadow: int | None = None
    revision: int = 0

    @property
    def versions(self) -> list[int]:
        """Every version this rollout routes to or mirrors, ascending."""
        return sorted({v for v in (self.champion, self.canary, self.shadow) if v is not None})


def bucket(model: str, key: str) -> float:
    """The point in ``[0, 1)`` that ``key`` hashes to for ``model`` (stable across processes).

    >>> bucket("credit", "c-42") == bucket("credit", "c-42")
    True
    >>> 0 <= bucket("credit", "c-42") < 1
    True
    """
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose(route: ModelRoute, key: str) -> tuple[int, Route] | None:
    """The version that answers ``key``, and why; None when the model has no serving version.

    >>> r = ModelRoute("m", champion=1, canary=2, canary_weight=0.0)
    >>> choose(r, "anyone")
    (1, 'champion')
    >>> choose(ModelRoute("m", champion=1, canary=2, canary_weight=1.0), "anyone")
    (2, 'canary')
    >>> choose(ModelRoute("m"), "anyone") is None
    True
    """
    if (route.canary is not None and route.canary_weight > 0
            and (route.champion is None or bucket(route.model, key) < route.canary_weight)):
        return route.canary, "canary"
    if route.champion is None:
        return None
    return route.champion, "champion"
