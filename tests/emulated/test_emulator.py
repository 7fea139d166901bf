"""What only the emulator can test: the fused tier on GPUs with less shared memory or no tensor cores, the
launches' shared-memory requests, and the code path a CUDA graph capture takes."""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastffnn
from fastffnn import reference as ref

from cuda_harness import check, launched_kernels, precision, ref_ffnn

emu = torch.ops.fastffnn

# (compute capability, cudaDevAttrMaxSharedMemoryPerBlockOptin) of each GPU generation
ARCHS = {
    "sm_75": (7, 5, 64 * 1024),
    "sm_80": (8, 0, 163 * 1024),
    "sm_86": (8, 6, 99 * 1024),
    "sm_89": (8, 9, 99 * 1024),
    "sm_90": (9, 0, 227 * 1024),
    "sm_120": (12, 0, 99 * 1024),
}


@contextlib.contextmanager
def setting(key, value, default):
    emu._emu_configure(key, value)
    try:
        yield
    finally:
        emu._emu_configure(key, default)


@contextlib.contextmanager
def device(arch):
    major, minor, optin = ARCHS[arch]
    with setting("cc_major", major, 9), setting("cc_minor", minor, 0), setting("smem_optin", optin, 227 * 1024):
        yield optin


@contextlib.contextmanager
def tier(name):
    previous = fastffnn.set_cuda_tier(name)
    try:
        yield
    finally:
        fastffnn.set_cuda_tier(previous)


def code_for(ptx_version):
    """The device runs this build's code compiled for ptx_version (cudaFuncGetAttributes' ptxVersion)."""
    return setting("ptx_version", ptx_version, 0)


def max_grid_x(blocks):
    return setting("max_grid_x", blocks, 2**31 - 1)


def small_ffnn(in_f=45, hid=60, out=9, rows=37):
    x = torch.randn(rows, in_f, dtype=torch.float64)
    params = [torch.randn(hid, in_f, dtype=torch.float64) / in_f**0.5, torch.randn(hid, dtype=torch.float64),
              torch.randn(out, hid, dtype=torch.float64) / hid**0.5, torch.randn(out, dtype=torch.float64)]
    return x, params


def launched_lines(fn):
    emu._emu_launches(True)
    fn()
    return emu._emu_launches(True)


def run_training_step(in_f, hid, out, dtype, batch=40):
    model = fastffnn.FastFFNN(in_f, hid, out).to(dtype)
    x = torch.randn(batch, in_f, dtype=dtype, requires_grad=True)
    y = torch.randint(0, out, (batch,))
    emu._emu_launches(True)
    loss = model.nll_loss(x, y)
    loss.backward()
    return [line.split() for line in emu._emu_launches(True)]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("mode", ["float32", "tf32", "bfloat16"])
@pytest.mark.parametrize("hid,out", [(256, 64), (256, 10), (200, 63), (128, 64), (31, 31)])
def test_fused_tier_fits_every_gpus_shared_memory(arch, mode, hid, out):
    # Every launch asks for no more shared memory than the device allows (the emulator refuses a launch
    # over the kernel's limit, and cudaFuncSetAttribute over the device's, as a GPU does); where the fused
    # kernels do not fit, the general tier runs instead, and nothing raises.
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    with device(arch) as optin, tier("fused"), precision(mode):
        launches = run_training_step(50, hid, out, dtype)
    fused = [l for l in launches if l[0].startswith("fused_")]
    for name, *_, smem in launches:
        assert int(smem.split("=")[1]) <= optin, (name, smem)
    if optin >= 163 * 1024 or (hid, out) in ((128, 64), (31, 31)):
        assert len(fused) == 2, launches  # fits everywhere
    if optin <= 99 * 1024 and (hid, out) == (256, 64):
        assert not fused, launches  # ~102 KB: too much for sm_75/86/89/120


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("sizes", [(50, 256, 128, 64), (50, 128, 128, 128, 64), (50, 31, 200, 31)])
def test_a_deep_fused_network_fits_every_gpus_shared_memory(arch, sizes):
    # The widest hidden layer sizes both kernels; where they do not fit, the general tier runs.
    with device(arch) as optin, tier("fused"), precision("tf32"):
        model = fastffnn.FastMLP(list(sizes))
        x = torch.randn(40, sizes[0], requires_grad=True)
        y = torch.randint(0, sizes[-1], (40,))
        emu._emu_launches(True)
        model.nll_loss(x, y).backward()
        launches = [line.split() for line in emu._emu_launches(True)]
    for name, *_, smem in launches:
        assert int(smem.split("=")[1]) <= optin, (name, smem)
    fused = [l for l in launches if l[0].startswith("fused_")]
    if optin >= 163 * 1024 or max(sizes[1:-1]) <= 128:
        assert len(fused) == 2, launches


def test_at_the_shared_memory_limit_the_fused_kernels_still_run_and_agree():
    # sm_86: the largest eligible shape that fits, checked against the reference like any other
    x, params = small_ffnn(in_f=70, hid=200, out=63, rows=45)
    with device("sm_86"), tier("fused"):
        names = launched_kernels(lambda: fastffnn.ffnn(x.float(), *[p.float() for p in params]))
        assert names == ["fused_forward_kernel"]
        check(lambda *a: fastffnn.ffnn(*a), lambda *a, **k: ref_ffnn(*a, **k), [x, *params], "tf32", K=200)


@pytest.mark.parametrize("mode", ["bfloat16", "float16", "tf32"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_without_tensor_cores_the_fused_tier_uses_exact_fmas(mode, activation):
    # sm_75 has no mma.sync for these types: float16/bfloat16/TF32 take the FMA path (Mma::None), which
    # no Hopper test reaches for the 16-bit dtypes
    x, params = small_ffnn()
    hidden = (lambda x, Vw, Vb, Ww, Wb: torch.ops.fastffnn.ffnn(x, Vw, Vb, Ww, Wb, activation, False)[1])
    with device("sm_75"), tier("fused"):
        check(lambda *a: fastffnn.ffnn(*a, activation=activation),
              lambda *a, **k: ref_ffnn(*a, activation=activation, **k), [x, *params], mode, K=60,
              relu_hidden=hidden if activation == "relu" else None)


@pytest.mark.parametrize("mode", ["bfloat16", "float16", "tf32"])
def test_code_compiled_below_sm_80_takes_the_fma_path_on_an_sm_90(mode):
    # A build whose only code for the device is older PTX (TORCH_CUDA_ARCH_LIST="7.5+PTX", JIT-compiled at load
    # on an sm_90) holds mma's __trap() branch: the emulator fails the kernel at its first mma there, so the
    # tier must pick the FMA path from the code's arch, not from the device's alone
    x, params = small_ffnn()
    dtype = torch.float32 if mode == "tf32" else getattr(torch, mode)
    with device("sm_90"), code_for(75), tier("fused"):
        with precision(mode):  # the fused tier, not the general one, runs in this mode
            assert launched_kernels(lambda: fastffnn.ffnn(x.to(dtype), *[p.to(dtype) for p in params])) == [
                "fused_forward_kernel"]
        check(lambda *a: fastffnn.ffnn(*a), lambda *a, **k: ref_ffnn(*a, **k), [x, *params], mode, K=60)


def test_the_tensor_core_path_follows_the_code_the_device_runs():
    # The same TF32 forward on an sm_90: code for sm_80 or sm_90 takes the tensor cores (TF32 operands: errors
    # of ~1e-3), code for sm_75 the exact FMAs (float32's ~1e-6)
    x, params = small_ffnn()
    expected = ref_ffnn(x, *params)
    out = {}
    with device("sm_90"), tier("fused"), precision("tf32"):
        for version in (0, 80, 90, 75):
            with code_for(version):
                out[version] = fastffnn.ffnn(x.float(), *[p.float() for p in params]).double()
    assert torch.equal(out[0], out[80]) and torch.equal(out[0], out[90])
    err = {v: ((o - expected).abs().max() / expected.abs().max()).item() for v, o in out.items()}
    assert err[75] < 1e-5 < err[0], err


@pytest.mark.parametrize("log", [False, True])
def test_more_rows_than_the_grid_allows_take_grid_stride_loops(log):
    # A grid of at most 3 blocks (the device's limit, set low): the row kernels (a warp per row, 4 rows a
    # block) then each take 50 rows in rounds; any row they skip stays NaN (poisoned) and fails the check
    w = torch.randn(7, 20, dtype=torch.float64)
    b = torch.randn(7, dtype=torch.float64)
    x = torch.randn(50, 20, dtype=torch.float64)
    target = torch.randint(0, 7, (50,))
    probs = torch.softmax(torch.randn(50, 7, dtype=torch.float64), -1)
    with max_grid_x(3), tier("general"):
        grids = [line.split()[1] for line in launched_lines(
            lambda: fastffnn.linear_softmax(x.float(), w.float(), b.float(), log=log))]
        assert "grid=(3,1,1)" in grids, grids
        check(lambda *a: fastffnn.linear_softmax(*a, log=log), lambda *a: ref.linear_softmax(*a, log=log),
              [x, w, b], "float32", K=20)
        check(lambda z: fastffnn.softmax_nll(z, target, "none"), lambda z: ref.softmax_nll(z, target, "none"),
              [x], "float32", K=20)
        check(lambda z, p: fastffnn.softmax_nll(z, p, "sum"), lambda z, p: ref.softmax_nll(z, p, "sum"),
              [x[:, :7].contiguous(), probs], "float32", K=20)


def test_the_fused_tier_gives_way_where_its_grid_would_be_too_large():
    # a block per 32 rows: 96 rows fit a grid of 3 blocks, 97 do not, and take the general tier
    x, params = small_ffnn(rows=97)
    with max_grid_x(3), tier("fused"):
        fits = launched_kernels(lambda: fastffnn.ffnn(x[:96].float(), *[p.float() for p in params]))
        too_many = launched_kernels(lambda: fastffnn.ffnn(x.float(), *[p.float() for p in params]))
        assert fits == ["fused_forward_kernel"], fits
        assert "fused_forward_kernel" not in too_many and "bias_softmax_kernel" in too_many, too_many
        check(lambda *a: fastffnn.ffnn(*a), lambda *a, **k: ref_ffnn(*a, **k), [x, *params], "float32", K=60)


def test_under_graph_capture_a_bad_class_index_gives_nan_instead_of_a_host_check():
    z = torch.randn(4, 5)
    bad = torch.tensor([0, 7, 2, 1])
    with pytest.raises(IndexError, match="class index 7"):
        fastffnn.softmax_nll(z, bad)
    emu._emu_configure("capturing", 1)
    try:
        loss = fastffnn.softmax_nll(z, bad, reduction="none")
    finally:
        emu._emu_configure("capturing", 0)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all()
    torch.testing.assert_close(loss[[0, 2, 3]], ref.softmax_nll(z, bad.clamp(max=4), "none")[[0, 2, 3]])


def test_the_emulator_refuses_unknown_settings():
    with pytest.raises(ValueError, match="unknown setting"):
        emu._emu_configure("warp_size", 64)
    with pytest.raises(ValueError, match="schedule must be"):
        emu._emu_configure("schedule", 3)


def test_the_tier_starts_as_the_environment_says_and_a_bad_one_is_refused():
    import os
    import subprocess
    import sys

    code = "import fastffnn, torch; print(fastffnn.cuda_tier()); fastffnn.ffnn(torch.randn(2, 3), torch.randn(4, 3), None, torch.randn(5, 4), None)"
    env = dict(os.environ, FASTFFNN_CUDA_TIER="general")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "general", r.stderr
    env["FASTFFNN_CUDA_TIER"] = "fastest"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "the CUDA tier must be 'auto', 'general' or 'fused', got 'fastest'" in r.stderr
    # set_cuda_tier repairs it, reporting the bad value as the previous setting
    repair = "import fastffnn, torch; print(fastffnn.set_cuda_tier('fused'), fastffnn.cuda_tier())"
    r = subprocess.run([sys.executable, "-c", repair], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["fastest", "fused"], r.stderr
