"""The training loop: deterministic, early-stopped, within a time and a memory budget.

Same table + same config (seed, threads) = same weights, bit for bit: the seed fixes the
initialisation and the shuffling, ``torch.use_deterministic_algorithms`` refuses
non-deterministic kernels, and one CPU thread keeps every float reduction in one order.
Training runs on a GPU when one is present and allowed; the returned model is always on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from trainer.errors import BudgetExceeded, NanLoss
from trainer.table import Split, Table
from trainer.training.model import TabularNet


@dataclass(frozen=True, slots=True)
class FitConfig:
    """Hyper-parameters and budgets of one run."""

    seed: int = 42
    hidden: Sequence[int] = (64, 32)
    onehot_max: int = 10
    embedding_dim_max: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 5
    time_budget_s: float = 1800.0
    memory_budget_mb: float = 4096.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 1

    def params(self) -> dict[str, float | int | str]:
        """The hyper-parameters as registry ``params`` (scalars only)."""
        return {"seed": self.seed, "hidden": ",".join(str(h) for h in self.hidden), "onehot_max": self.onehot_max,
                "embedding_dim_max": self.embedding_dim_max, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "max_epochs": self.max_epochs,
                "patience": self.patience, "optimizer": "adam"}


@dataclass(slots=True)
class FitResult:
    """A trained model (on CPU, in eval mode) and how the run went."""

    model: TabularNet
    epochs: int
    best_epoch: int
    stopped_because: Literal["early_stopping", "max_epochs", "time_budget"]
    train_losses: list[float] = field(default_factory=list)
    validation_losses: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    device: str = "cpu"


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and pin the CPU thread count; restore them after."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def _device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        # cuBLAS needs a fixed workspace to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return torch.device("cuda")
    return torch.device("cpu")


def _tensors(split: Split, device: torch.device, n_numeric: int, n_categorical: int,
             regression: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = len(split)
    numeric = torch.from_numpy(split.inputs["numeric"]) if n_numeric else torch.zeros(rows, 0)
    categorical = (torch.from_numpy(split.inputs["categorical"]) if n_categorical
                   else torch.zeros(rows, 0, dtype=torch.int64))
    target = torch.from_numpy(split.target.astype(np.float32 if regression else np.int64))
    return numeric.to(device), categorical.to(device), target.to(device)


def estimate_mb(table: Table, config: FitConfig) -> float:
    """Memory the run needs, roughly: the data (twice: numpy and torch) and the model with Adam's state."""
    rows = len(table.train) + len(table.validation) + len(table.holdout)
    width = len(table.contract.numeric) * 4 + len(table.contract.categorical) * 8 + 8
    data = rows * width * 2
    embeddings = sum((len(c.vocabulary) + 1) * max(config.embedding_dim_max, config.onehot_max + 1)
                     for c in table.contract.categorical)
    layer_in = len(table.contract.numeric) + sum(min(len(c.vocabulary) + 1, 64) for c in table.contract.categorical)
    weights = embeddings + sum(a * b for a, b in zip([layer_in, *config.hidden], [*config.hidden, table.n_outputs],
                                                     strict=True))
    activations = config.batch_size * (layer_in + sum(config.hidden)) * 4 * 3
    return (data + weights * 4 * 4 + activations) / 2**20


def build_model(table: Table, config: FitConfig) -> TabularNet:
    """A freshly initialised network for ``table`` (seed it first for reproducible weights)."""
    pre = table.preprocessing
    return TabularNet(task=table.contract.task, numeric_mean=pre.numeric_mean, numeric_std=pre.numeric_std,
                      cardinalities=[len(c.vocabulary) for c in table.contract.categorical],
                      n_outputs=table.n_outputs, hidden=list(config.hidden), onehot_max=config.onehot_max,
                      embedding_dim_max=config.embedding_dim_max, target_mean=pre.target_mean,
                      target_std=pre.target_std)


def fit(table: Table, config: FitConfig) -> FitResult:
    """Train a network on ``table.train``, early-stopped on ``table.validation``; the best weights win.

    Raises:
        BudgetExceeded: the run would need more than ``config.memory_budget_mb``.
        NanLoss: the loss became NaN or infinite.

    """
    needed = estimate_mb(table, config)
    if needed > config.memory_budget_mb:
        raise BudgetExceeded(f"the run needs about {needed:.0f} MiB, over the budget of "
                             f"{config.memory_budget_mb:.0f} MiB; shorten the window or raise "
                             "TRAINER_MEMORY_BUDGET_MB")
    started = time.monotonic()
    task = table.contract.task
    regression = task == "regression"
    with deterministic(config.seed, config.threads):
        device = _device(config.device)
        model = build_model(table, config).to(device)
        n_num, n_cat = model.n_numeric, model.n_categorical
        x_num, x_cat, y = _tensors(table.train, device, n_num, n_cat, regression)
        v_num, v_cat, v_y = _tensors(table.validation, device, n_num, n_cat, regression)
        loss_fn: nn.Module = nn.MSELoss() if regression else (nn.BCEWithLogitsLoss() if task == "binary"
                                                              else nn.CrossEntropyLoss())
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                     weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)

        def loss_of(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if regression:
                loss: torch.Tensor = loss_fn(raw.squeeze(1), (target - model.target_mean) / model.target_std)
            elif task == "binary":
                loss = loss_fn(raw.squeeze(1), target.float())
            else:
                loss = loss_fn(raw, target)
            return loss

        best_state = copy.deepcopy(model.state_dict())
        best_loss, best_epoch, since_best = math.inf, 0, 0
        train_losses: list[float] = []
        validation_losses: list[float] = []
        stopped: Literal["early_stopping", "max_epochs", "time_budget"] = "max_epochs"
        epoch = 0
        out_of_time = False
        n = len(table.train)
        while epoch < config.max_epochs and not out_of_time:
            epoch += 1
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            total, seen = 0.0, 0
            for start in range(0, n, config.batch_size):
                idx = order[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_of(model(x_num[idx], x_cat[idx]), y[idx])
                if not torch.isfinite(loss):
                    raise NanLoss(f"the training loss became {loss.item()} in epoch {epoch}; check the features "
                                  "for extreme values or lower TRAINER_LEARNING_RATE")
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.item()) * len(idx)
                seen += len(idx)
                if time.monotonic() - started > config.time_budget_s:
                    out_of_time = True
                    break
            train_losses.append(total / max(seen, 1))
            model.eval()
            with torch.no_grad():
                val = float(loss_of(model(v_num, v_cat), v_y).item())
            if not math.isfinite(val):
                raise NanLoss(f"the validation loss became {val} in epoch {epoch}; check the features for extreme "
                              "values or lower TRAINER_LEARNING_RATE")
            validation_losses.append(val)
            if val < best_loss:
                best_loss, best_epoch, since_best = val, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if since_best >= config.patience:
                    stopped = "early_stopping"
                    break
            if out_of_time:
                stopped = "time_budget"
        model.load_state_dict(best_state)
        model = model.to("cpu").eval()
    return FitResult(model=model, epochs=epoch, best_epoch=best_epoch, stopped_because=stopped,
                     train_losses=train_losses, validation_losses=validation_losses,
                     duration_s=time.monotonic() - started, device=str(device))


def predict(model: TabularNet, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The served outputs of ``model`` (on CPU) for contract-shaped ``inputs``."""
    rows = len(next(iter(inputs.values())))
    numeric = torch.from_numpy(inputs["numeric"]) if model.n_numeric else torch.zeros(rows, 0)
    categorical = (torch.from_numpy(inputs["categorical"]) if model.n_categorical
                   else torch.zeros(rows, 0, dtype=torch.int64))
    with torch.no_grad():
        out: np.ndarray = model.serve(numeric, categorical).numpy()
    return out
