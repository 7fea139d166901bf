"""Which CUDA tier runs the whole-network ops (``ffnn``, ``ffnn_nll`` and FastFFNN).

* ``"general"``: cuBLAS for the matrix products, fastffnn's single-pass
  kernels between them; any width and dtype.
* ``"fused"``: the fully fused kernels wherever they apply (hidden <= 256,
  classes <= 64, float32/float16/bfloat16, and the kernels' shared memory
  within the GPU's limit); the general tier elsewhere.
* ``"auto"`` (the default): the fused tier where it applies and a prior on
  the batch size and the work per block says it is faster (README, CUDA).

The setting starts as ``$FASTFFNN_CUDA_TIER`` (read once, at the first CUDA
op) and holds for the whole process. It has no effect on the CPU.
"""

from __future__ import annotations

import os

import torch

from . import _graphs
from ._build import backend
from ._runtime import ensure_loaded

TIERS = ("auto", "general", "fused")
_cpu_only_setting = "auto"


def _check(tier: object) -> str:
    if tier not in TIERS:
        raise ValueError(f"fastffnn.set_cuda_tier: tier must be one of {', '.join(map(repr, TIERS))}, got {tier!r}")
    return tier  # type: ignore[return-value]


def cuda_tier() -> str:
    """The CUDA tier setting: ``"auto"``, ``"general"`` or ``"fused"``."""
    if backend() == "cpu":
        return _cpu_only_setting
    ensure_loaded()
    return torch.ops.fastffnn._cuda_tier()


def set_cuda_tier(tier: str) -> str:
    """Sets the CUDA tier (``"auto"``, ``"general"`` or ``"fused"``) and returns the previous setting.

    It also replaces a bad ``$FASTFFNN_CUDA_TIER`` (which makes CUDA ops raise); the previous setting is
    then that bad value.
    """
    global _cpu_only_setting
    _check(tier)
    try:
        previous = cuda_tier()
    except ValueError:
        previous = os.environ.get("FASTFFNN_CUDA_TIER", "")
    if backend() == "cpu":
        _cpu_only_setting = tier
    else:
        torch.ops.fastffnn._set_cuda_tier(tier)
    _graphs.tier_changed()  # a graph holds the kernels of the tier it was captured in
    return previous
