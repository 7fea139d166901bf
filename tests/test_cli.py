"""`python -m fastffnn` prints the environment and passes its self-check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastffnn import selfcheck


def test_main_prints_environment_and_self_check():
    proc = subprocess.run([sys.executable, "-m", "fastffnn"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in ("torch", "device", "compiler", "build directory", "kernels"):
        assert key in proc.stdout
    assert "11 passed, 0 failed" in proc.stdout


def test_self_check_detects_a_wrong_kernel(monkeypatch):
    import fastffnn.reference as reference

    monkeypatch.setitem(reference.ACTIVATIONS, "relu", lambda z: torch_relu_off_by_a_bit(z))
    results = {r.op: r.ok for r in selfcheck.run()}
    assert results["linear_act[relu]"] is False
    assert results["linear_act[tanh]"] is True


def torch_relu_off_by_a_bit(z):
    return z.clamp_min(0) + 1e-6
