"""The training loops: FastFFNN's, and the stock lecture FFNN's that ``--compare`` runs beside it.

Both see the same examples in the same order each epoch (a permutation seeded
by the run's seed and the epoch), start from the same weights and use Adam
with the same learning rate, so their accuracies and times compare like for
like. Batch size 1 is the lecture's loop: one 1-D example per step.

* FastFFNN (FastMLP for several hidden widths) on the CPU: ``fastffnn.optim.Adam``
  and its ``train_step``, the whole step in one native call. On CUDA: ``nll_loss`` with
  ``torch.optim.Adam(fused=True)``.
* The stock FFNN: the lecture's step, ``zero_grad``, ``probs = ffnn(x)``,
  ``loss = neg(log(probs)) . one_hot``, ``backward``, ``optim.Adam.step``.

Only the training steps are timed; the dev-set evaluation after each epoch
is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import optim as fast_optim
from ..mlp import FastMLP
from ..module import FastFFNN
from ..reference import lecture_loss


@dataclass
class History:
    label: str
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    dev_accuracy: list[float] = field(default_factory=list)  # after each epoch
    seconds: float = 0.0  # training steps only
    examples: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else math.nan


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item()


def _stock_step(model: nn.Module, opt: torch.optim.Optimizer, classes: int):
    def step(x: Tensor, y: Tensor) -> Tensor:
        model.zero_grad()
        probs = model(x)
        loss = lecture_loss(probs, nn.functional.one_hot(y, classes).to(probs.dtype))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _fast_step(model: FastFFNN | FastMLP, lr: float):
    if next(model.parameters()).device.type == "cpu":
        opt = fast_optim.Adam(model.parameters(), lr=lr)
        return lambda x, y: opt.train_step(model, x, y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)

    def step(x: Tensor, y: Tensor) -> Tensor:
        opt.zero_grad()
        loss = model.nll_loss(x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def train(model: nn.Module, label: str, train_set: tuple[Tensor, Tensor], dev_set: tuple[Tensor, Tensor],
          classes: int, epochs: int, batch_size: int, lr: float, seed: int, progress: bool = True) -> History:
    """Trains ``model`` in place and returns its per-epoch history."""
    x, y = train_set
    step = _fast_step(model, lr) if isinstance(model, (FastFFNN, FastMLP)) else _stock_step(
        model, torch.optim.Adam(model.parameters(), lr=lr), classes)
    history = History(label)
    n = x.shape[0]
    bar = _progress_bar(epochs * n, label) if progress else None
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).to(x.device)
        steps, pending = 0, 0
        losses = []
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            if batch_size == 1:
                loss = step(x[idx[0]], y[idx[0]])  # one 1-D example, as in the lecture
            else:
                loss = step(x[idx], y[idx])
            losses.append(loss)
            steps += 1
            pending += len(idx)
            if bar is not None and (steps % 64 == 0 or i + batch_size >= n):
                # the loss is read back only when the bar is redrawn
                elapsed = history.seconds + time.perf_counter() - start
                bar.set_postfix(loss=f"{losses[-1].item():.3f}", ex_s=f"{(history.examples + i + len(idx)) / elapsed:,.0f}",
                                refresh=False)
                bar.update(pending)
                pending = 0
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        history.seconds += time.perf_counter() - start
        history.examples += n
        total = torch.stack(losses).double().mean().item() if losses else math.nan
        history.train_loss.append(total)
        history.dev_accuracy.append(accuracy(model, *dev_set))
        line = (f"{label:>9} epoch {epoch + 1:>3}/{epochs}: train loss {total:.4f}, dev accuracy "
                f"{history.dev_accuracy[-1]:.2%}")
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
    if bar is not None:
        bar.close()
    return history


def _progress_bar(total: int, label: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="ex", mininterval=0.2, leave=False, dynamic_ncols=True)
