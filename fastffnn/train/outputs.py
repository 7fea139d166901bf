"""What a training run leaves behind: a checkpoint the stock FFNN loads, a PNG of the curves, a summary."""

from __future__ import annotations

import json
import os

import torch

from .loop import History


def save_checkpoint(model: torch.nn.Module, path: str, meta: dict) -> None:
    """The model's state_dict (keys V.weight, V.bias, W.weight, W.bias) and a JSON of how it was made."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=2)


def plot_curves(path: str, histories: list[History], title: str) -> bool:
    """Training loss and dev accuracy per epoch, one line per model; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for h in histories:
        epochs = range(1, len(h.train_loss) + 1)
        ax_loss.plot(epochs, h.train_loss, marker="o", label=h.label)
        ax_acc.plot(epochs, [100 * a for a in h.dev_accuracy], marker="o", label=h.label)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="dev accuracy (%)", title="dev accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summary(histories: list[History]) -> str:
    lines = [f"{'model':<10}{'dev accuracy':>14}{'train time':>12}{'examples/s':>13}"]
    for h in histories:
        lines.append(f"{h.label:<10}{h.dev_accuracy[-1]:>14.2%}{h.seconds:>11.2f}s{h.examples_per_second:>13,.0f}")
    if len(histories) == 2:
        fast, stock = histories
        lines.append(f"fastffnn trained {stock.seconds / fast.seconds:.1f}x faster than stock PyTorch "
                     f"(same data, order, initial weights and learning rate)")
    return "\n".join(lines)
