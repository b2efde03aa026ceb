"""The tabular network: preprocessing in the graph, an MLP, one head per task.

Inputs are raw: ``numeric`` FP32 with NaN for missing values, ``categorical`` INT64 category
indices with 0 for missing/unknown (see :mod:`trainer.contract`). The network imputes NaN with
the training mean, standardises, looks categories up in one-hot tables (small vocabularies) or
learned embeddings (large ones), and runs the MLP. :meth:`TabularNet.forward` returns the raw
head (logits, or the standardised target) for the loss; :class:`ServingModule` adds the
output activation and is what gets exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from trainer.contract import Task


class TabularNet(nn.Module):
    """An MLP over standardised numeric features and encoded categorical features."""

    numeric_mean: torch.Tensor
    numeric_std: torch.Tensor
    cardinality: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, *, task: Task, numeric_mean: np.ndarray, numeric_std: np.ndarray,
                 cardinalities: Sequence[int], n_outputs: int, hidden: Sequence[int], onehot_max: int,
                 embedding_dim_max: int, target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        self.task = task
        self.n_numeric = len(numeric_mean)
        self.n_categorical = len(cardinalities)
        self.register_buffer("numeric_mean", torch.tensor(numeric_mean, dtype=torch.float32))
        self.register_buffer("numeric_std", torch.tensor(numeric_std, dtype=torch.float32))
        self.register_buffer("cardinality", torch.tensor([c + 1 for c in cardinalities], dtype=torch.int64))
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))
        self.encoders = nn.ModuleList()
        width = self.n_numeric
        for cardinality in cardinalities:
            size = cardinality + 1  # index 0: missing or unknown
            if cardinality <= onehot_max:
                table = nn.Embedding(size, size)
                with torch.no_grad():
                    table.weight.copy_(torch.eye(size))
                table.weight.requires_grad_(False)  # a fixed one-hot lookup
                width += size
            else:
                dim = min(embedding_dim_max, max(2, (size + 1) // 2))
                table = nn.Embedding(size, dim)
                width += dim
            self.encoders.append(table)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """The raw head: logits (classification) or the standardised target (regression)."""
        parts: list[torch.Tensor] = []
        if self.n_numeric:
            filled = torch.where(torch.isnan(numeric), self.numeric_mean.expand_as(numeric), numeric)
            parts.append((filled - self.numeric_mean) / self.numeric_std)
        if self.n_categorical:
            valid = (categorical >= 0) & (categorical < self.cardinality)
            index = torch.where(valid, categorical, torch.zeros_like(categorical))
            for j, table in enumerate(self.encoders):
                parts.append(table(index[:, j]))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        out: torch.Tensor = self.head(self.body(x))
        return out

    def serve(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """The served output: P(positive) [-1, 1], class probabilities [-1, C] or the target [-1, 1]."""
        raw = self.forward(numeric, categorical)
        if self.task == "binary":
            return torch.sigmoid(raw)
        if self.task == "multiclass":
            return torch.softmax(raw, dim=1)
        return raw * self.target_std + self.target_mean


class ServingModule(nn.Module):
    """The exported graph: takes only the inputs that have columns, returns the served output."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(numeric, categorical)``, ``(numeric,)`` or ``(categorical,)``, as the contract says."""
        rows = inputs[0].shape[0]
        numeric = inputs[0] if self.net.n_numeric else torch.zeros(rows, 0)
        categorical = inputs[-1] if self.net.n_categorical else torch.zeros(rows, 0, dtype=torch.int64)
        return self.net.serve(numeric, categorical)
