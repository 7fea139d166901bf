"""The training loops: FastFFNN's, and the stock lecture FFNN's that ``--compare`` runs beside it.

Both see the same examples in the same order each epoch (a permutation seeded
by the run's seed and the epoch), start from the same weights and use Adam
with the same learning rate, so their accuracies and times compare like for
like. Batch size 1 is the lecture's loop: one 1-D example per step.

* FastFFNN (FastMLP for several hidden widths) on the CPU: ``fastffnn.optim.Adam``
  and ``model.fit``, each epoch (or each stretch of steps between two redraws
  of the progress bar) one native call. On CUDA: ``nll_loss`` with
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
    if isinstance(model, (FastFFNN, FastMLP)) and x.device.type == "cpu":
        return _train_with_fit(model, label, train_set, dev_set, epochs, batch_size, lr, seed, progress)
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
        _end_epoch(history, bar, model, dev_set, epoch, epochs)
    if bar is not None:
        bar.close()
    return history


def _train_with_fit(model, label, train_set, dev_set, epochs, batch_size, lr, seed, progress) -> History:
    """``train`` for FastFFNN/FastMLP on the CPU: ``fit``, one epoch per call, with the stock loop's order."""
    x, y = train_set
    opt = fast_optim.Adam(model.parameters(), lr=lr)
    history = History(label)
    n = x.shape[0]
    bar = _progress_bar(epochs * n, label) if progress else None
    every = max(1, 4096 // batch_size)  # steps between two redraws: a few milliseconds of native work
    for epoch in range(epochs):
        start = time.perf_counter()
        done = [0]

        def redraw(step: int, loss: float) -> None:
            examples = min(step * batch_size, n)
            elapsed = history.seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{(history.examples + examples) / elapsed:,.0f}",
                            refresh=False)
            bar.update(examples - done[0])
            done[0] = examples

        # the same permutation as the stock loop's: fit draws torch.randperm(n, generator) per epoch
        mean = model.fit(x, y, opt, epochs=1, batch_size=batch_size,
                         generator=torch.Generator().manual_seed(seed * 1000 + epoch),
                         callback=redraw if bar is not None else None, callback_every=every)[0]
        history.seconds += time.perf_counter() - start
        if bar is not None:
            bar.update(n - done[0])
        history.examples += n
        history.train_loss.append(mean)
        _end_epoch(history, bar, model, dev_set, epoch, epochs)
    if bar is not None:
        bar.close()
    return history


def _end_epoch(history: History, bar, model, dev_set, epoch: int, epochs: int) -> None:
    """The dev accuracy after an epoch, and its line under the progress bar."""
    history.dev_accuracy.append(accuracy(model, *dev_set))
    line = (f"{history.label:>9} epoch {epoch + 1:>3}/{epochs}: train loss {history.train_loss[-1]:.4f}, dev "
            f"accuracy {history.dev_accuracy[-1]:.2%}")
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


def _progress_bar(total: int, label: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="ex", mininterval=0.2, leave=False, dynamic_ncols=True)
