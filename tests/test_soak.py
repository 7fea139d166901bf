"""A shortened soak (benchmarks/soak.py): memory stays flat over thousands of training steps on every path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import soak  # noqa: E402


def test_memory_is_flat_after_warm_up():
    samples = soak.soak(steps=8000, every=2000, report=lambda line: None)
    assert len(samples) >= 4
    assert soak.growth_mb(samples) < 8.0, samples
