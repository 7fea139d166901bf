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
    assert "17 passed, 0 failed" in proc.stdout
    for depth in (0, 1, 3):  # the network of any depth
        assert f"mlp_nll[depth {depth}]" in proc.stdout


def test_self_check_detects_a_wrong_kernel():
    # Two broken kernels, registered over the real ones at the dispatcher's
    # CPU key for the duration of the test: linear_act's forward is off by
    # 1e-6 for relu, and linear_act_backward's input gradient is off for
    # sigmoid. The self-check reaches them through the real op and must fail
    # exactly those cases.
    import warnings

    import torch
    import torch.nn.functional as F

    from fastffnn import reference

    torch.ops.fastffnn.linear_act  # noqa: B018: the library is loaded by selfcheck's first op call anyway
    lib = torch.library.Library("fastffnn", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"

            def forward(input, weight, bias=None, activation="tanh"):  # the dispatcher drops defaults
                z = F.linear(input, weight, bias)
                return reference.ACTIVATIONS[activation](z) + (1e-6 if activation == "relu" else 0.0)

            def backward(grad_output, input, weight, output, activation, output_mask):
                dz = grad_output * {"tanh": 1 - output * output, "relu": (output > 0).to(output.dtype),
                                    "sigmoid": output * (1 - output)}[activation]
                gx = dz @ weight
                if activation == "sigmoid":
                    gx = gx * 1.001
                return gx, dz.reshape(-1, dz.shape[-1]).T @ input.reshape(-1, input.shape[-1]), dz.reshape(
                    -1, dz.shape[-1]).sum(0)

            lib.impl("linear_act", forward, "CPU")
            lib.impl("linear_act_backward", backward, "CPU")
        results = {r.op: r.ok for r in selfcheck.run()}
    finally:
        lib._destroy()
    assert results["linear_act[relu]"] is False
    assert results["linear_act[sigmoid]"] is False
    assert results["linear_act[tanh]"] is True
    # the real kernels are back
    assert all(r.ok for r in selfcheck.run())
