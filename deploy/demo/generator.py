"""A credit-default task streamed through the real services, with a shift injected at a known time.

Each tick (one second) the generator sends a batch of loan applications to ingest
(``POST /v1/events/batch``), asks the inference gateway for a prediction for each one
(``POST /v1/predict`` with the applicant's features, once a champion serves), and, a few seconds
later, publishes whether the applicant defaulted through ingest (``POST /v1/labels/batch``, each
label naming its feature event). So the trainer finds labelled windows, the drift service joins
labels to predictions (concept drift), and the gateway measures each route's online accuracy.

:meth:`Generator.shift` switches to a recession: incomes fall by a quarter, debt ratios rise, and
the default relationship changes (debt and region weigh more, late payments less): a covariate
and a concept shift at once. Everything is drawn from seeded generators.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DATASET = "credit"
MODEL = "credit-default"
SHIFTED_FEATURES = ("income", "debt_ratio")
"""The features whose distribution the shift moves (the timeline expects drift to name them)."""

SPEC: dict[str, Any] = {
    "name": DATASET,
    "description": "Consumer credit applications; the label is a default within 12 months.",
    "entity": "applicant",
    "features": [
        {"name": "age", "type": "numeric", "min": 18, "max": 100},
        {"name": "income", "type": "numeric", "min": 0},
        {"name": "debt_ratio", "type": "numeric", "min": 0, "max": 10},
        {"name": "credit_lines", "type": "numeric", "min": 0, "max": 100},
        {"name": "late_payments", "type": "numeric", "min": 0, "max": 50},
        {"name": "home", "type": "categorical", "categories": ["rent", "own", "mortgage"]},
        {"name": "region", "type": "categorical", "categories": ["north", "south", "east", "west"]},
        {"name": "employment_years", "type": "numeric", "min": 0, "max": 60, "nullable": True},
    ],
    "label": {"type": "binary"},
}


def http_json(url: str, body: Any = None, *, method: str = "POST", token: str | None = None,
              timeout_s: float = 30.0) -> tuple[int, Any]:
    """Send JSON (or nothing), return the status and the decoded answer, HTTP errors included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else {}
        except ValueError:
            return exc.code, {"error": raw.decode(errors="replace")}


def applicant(rng: random.Random, *, shifted: bool) -> tuple[dict[str, Any], int]:
    """One application's features and whether the applicant defaults (before or after the shift)."""
    income = max(0.0, rng.gauss(39_000 if shifted else 52_000, 15_000 if shifted else 18_000))
    debt_ratio = max(0.0, min(10.0, rng.gauss(0.55 if shifted else 0.35, 0.15)))
    late = rng.choices([0, 1, 2, 3, 5], weights=[70, 15, 8, 5, 2])[0]
    age = rng.randint(18, 80)
    home = rng.choice(["rent", "own", "mortgage"])
    region = rng.choice(["north", "south", "east", "west"])
    employment = None if rng.random() < 0.05 else rng.randint(0, min(40, age - 18))
    if not shifted:
        z = (-1.3 + 4.0 * (debt_ratio - 0.35) + 0.7 * late - 1.0 * (income - 52_000) / 18_000
             - 0.02 * (age - 45) + 0.4 * (home == "rent"))
    else:
        # The recession: debt and the south region drive defaults, late payments matter little.
        z = (-1.0 + 9.0 * (debt_ratio - 0.55) + 0.1 * late - 0.3 * (income - 39_000) / 15_000
             + 1.6 * (region == "south") - 1.0 * (region == "north") - 0.8 * (home == "own"))
    features = {"age": age, "income": round(income, 2), "debt_ratio": round(debt_ratio, 3),
                "credit_lines": rng.randint(0, 20), "late_payments": late, "home": home, "region": region,
                "employment_years": employment}
    return features, int(rng.random() < 1 / (1 + math.exp(-z)))


@dataclass
class Counts:
    """What the generator did so far (read by the progress line)."""

    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    predicted: int = 0
    not_served: int = 0
    labels: int = 0


class Generator:
    """Streams applications, predictions and delayed labels until stopped.

    Args:
        ingest_url: base URL of ingest.
        inference_url: base URL of the gateway; None: no predictions.
        rate: applications per second.
        label_delay_s: seconds between an application and its label.
        seed: seed of every random choice.

    """

    def __init__(self, ingest_url: str, inference_url: str | None, *, rate: float, label_delay_s: float = 3.0,
                 seed: int = 7, invalid_share: float = 0.005) -> None:
        self.ingest_url = ingest_url
        self.inference_url = inference_url
        self.rate = rate
        self.label_delay_s = label_delay_s
        self.invalid_share = invalid_share
        self.rng = random.Random(seed)
        self.counts = Counts()
        self.stop = threading.Event()
        self.shifted_at: float | None = None
        """Wall-clock time (``time.time()``) the shift was injected."""
        self._pending: deque[tuple[float, dict[str, Any]]] = deque()
        self._run = uuid.uuid4().hex[:8]
        self._seq = 0
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="predict")

    def shift(self) -> None:
        """Inject the covariate and concept shift from the next batch on."""
        self.shifted_at = time.time()

    def run(self) -> None:
        """One batch per second until stopped."""
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self.tick()
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def tick(self) -> None:
        """Send one batch of applications, their predictions, and the labels that are due."""
        shifted = self.shifted_at is not None
        events, labels = [], []
        for _ in range(max(1, int(self.rate))):
            self._seq += 1
            features, default = applicant(self.rng, shifted=shifted)
            if self.rng.random() < self.invalid_share:
                features = {**features, "age": "unknown"}  # refused by ingest, dead-lettered
            event = {"event_id": f"{self._run}-{self._seq}", "dataset": DATASET,
                     "entity_id": f"applicant-{self._run}-{self._seq}", "event_time": datetime.now(UTC).isoformat(),
                     "features": features}
            events.append(event)
            labels.append(default)
        try:
            status, answer = http_json(f"{self.ingest_url}/v1/events/batch", events)
        except OSError:
            self.counts.failed += len(events)
            return
        if status == 200:
            accepted = {e["event_id"] for e in events}
        elif status == 422:
            accepted = set(answer.get("accepted_event_ids", []))
        else:
            self.counts.failed += len(events)
            return
        self.counts.accepted += len(accepted)
        self.counts.rejected += len(events) - len(accepted)
        kept = [(e, y) for e, y in zip(events, labels, strict=True) if e["event_id"] in accepted]
        if self.inference_url is not None:
            for served in self._pool.map(self._predict, [e for e, _ in kept]):
                if served:
                    self.counts.predicted += 1
                else:
                    self.counts.not_served += 1
        due = time.monotonic() + self.label_delay_s
        for e, y in kept:
            self._pending.append((due, {"event_id": f"label-{e['event_id']}", "dataset": DATASET,
                                        "entity_id": e["entity_id"], "event_time": "", "label": y,
                                        "feature_event_id": e["event_id"]}))
        self._send_labels()

    def _predict(self, event: dict[str, Any]) -> bool:
        assert self.inference_url is not None
        try:
            status, _ = http_json(f"{self.inference_url}/v1/predict",
                                  {"model": MODEL, "entity_id": event["entity_id"], "dataset": DATASET,
                                   "features": event["features"]}, timeout_s=10)
        except OSError:
            return False
        return status == 200

    def _send_labels(self) -> None:
        now = time.monotonic()
        due = []
        while self._pending and self._pending[0][0] <= now:
            label = self._pending.popleft()[1]
            due.append({**label, "event_time": datetime.now(UTC).isoformat()})
        if not due:
            return
        try:
            status, answer = http_json(f"{self.ingest_url}/v1/labels/batch", due)
        except OSError:
            status, answer = 0, {}
        accepted = len(due) if status == 200 else len(answer.get("accepted_event_ids", []))
        self.counts.labels += accepted
