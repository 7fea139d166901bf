"""The harness of the CUDA tests: where they run, poisoned memory, tolerances set from the arithmetic, and a
float64 reference that takes ReLU's derivative where the kernel did at the kink.

The CUDA tests (tests/test_cuda.py, tests/emulated/) run on a GPU, or without one under
FASTFFNN_BACKEND=emulated, where CPU tensors take the CUDA route and csrc/cuda/'s kernels run on the CPU in the
emulator (csrc/cuda/emulation/). There, every case runs under three thread schedules (threads and blocks in
ascending, descending and seeded random order), whose results must agree bit for bit: a disagreement is a race.

Tolerances. Each comparison is normwise: max|ours - ref| <= tol * scale, the reference computed in float64
from the operands rounded to the tested dtype, and scale = max|ref| (for the op's output also at least
max|ref(|operands|)|: the magnitude a rounding error is relative to, which max|ref| understates where a
sum like x @ w + b cancels). With u the unit roundoff of what a mode rounds to and K the
longest sum in the computation (the input width, the hidden width, the class count or the batch):

    tol = 4 * (K * 2**-24 + rounds * u)

K * 2**-24 is the worst-case error of a K-term float32 sum relative to the sum of its terms (Higham's gamma_K;
2**-53 in float64), which also covers the cancellation of random-signed terms; `rounds * u` is the rounding the
mode adds: float64 and float32
(exact FMAs) rounds its output once (u = 2**-24); TF32 rounds both operands of a product to 10 mantissa bits
(u = 2**-11, rounds = 2; the reference of the first layer takes x and V rounded as cvt.rna.tf32 does);
bfloat16 and float16 round the hidden activations and the outputs, and the gradients between layers
(u = 2**-8 and 2**-11, rounds = 2). The factor 4 is the margin. Below the dtype's smallest normal number rounding is absolute, not relative, so
each comparison also allows 4 * rounds * the dtype's subnormal spacing (2**-24 for float16, whose gradients reach
that range under 'mean' reductions). A wrong kernel is off by O(1), or NaN.

ReLU. A pre-activation within its rounding bound of 0 may land on either side in a correct kernel, which flips
ReLU's derivative there (TF32 does so for dozens of units per case). The reference takes the kernel's side at
those units only (from the kernel's own hidden activations); everywhere else its own.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from fastffnn import reference as ref

EMULATED = os.environ.get("FASTFFNN_BACKEND", "").lower() == "emulated"
DEVICE = "cpu" if EMULATED else "cuda"
AVAILABLE = EMULATED or torch.cuda.is_available()
SKIP_REASON = "no CUDA GPU visible (FASTFFNN_BACKEND=emulated runs these tests on the CUDA emulator)"
SCHEDULES = (0, 1, 2) if EMULATED else (None,)

MODES = {  # mode: (dtype, TF32 allowed)
    "float64": (torch.float64, False),
    "float32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bfloat16": (torch.bfloat16, False),
    "float16": (torch.float16, False),
}
UNIT = {"float64": 2.0**-53, "float32": 2.0**-24, "tf32": 2.0**-11, "bfloat16": 2.0**-8, "float16": 2.0**-11}
ROUNDS = {"float64": 1, "float32": 1, "tf32": 2, "bfloat16": 2, "float16": 2}


def subnormal_spacing(mode: str) -> float:
    return torch.finfo(MODES[mode][0]).smallest_normal * torch.finfo(MODES[mode][0]).eps


def tolerance(mode: str, K: int) -> float:
    """The normwise tolerance for `mode` when the longest sum has K terms (module docstring)."""
    accumulate = 2.0**-53 if mode == "float64" else 2.0**-24
    return 4.0 * (max(K, 1) * accumulate + ROUNDS[mode] * UNIT[mode])


@contextlib.contextmanager
def precision(mode: str):
    """TF32 on for mode 'tf32', off otherwise (cuBLAS and the fused tier both follow it)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = MODES[mode][1]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def set_schedule(schedule: int | None) -> None:
    if schedule is not None:
        torch.ops.fastffnn._emu_configure("schedule", schedule)
        torch.ops.fastffnn._emu_configure("seed", int(torch.randint(0, 2**31, ()).item()))


def poison() -> None:
    """Makes memory a kernel never writes read as NaN.

    On a GPU: fills the caching allocator's free blocks with NaN. Emulated: the CPU allocator fills every new
    tensor with NaN (torch.utils.deterministic.fill_uninitialized_memory, set for the session in
    tests/emulated/conftest.py and by check()), and the emulator poisons shared memory itself.
    """
    if EMULATED:
        return
    blocks = [torch.full((n,), float("nan"), device="cuda") for n in (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24)]
    del blocks


@contextlib.contextmanager
def poisoned_allocations():
    if not EMULATED:
        yield
        return
    old = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.utils.deterministic.fill_uninitialized_memory = old[1]


@contextlib.contextmanager
def device_steps():
    """Adam's step counters count as device memory inside the block: on a GPU they are where
    Adam(capturable=True) keeps them, and this does nothing; the emulated build, whose tensors are all CPU
    tensors, turns on the emulator's device_steps setting."""
    if not EMULATED:
        yield
        return
    torch.ops.fastffnn._emu_configure("device_steps", 1)
    try:
        yield
    finally:
        torch.ops.fastffnn._emu_configure("device_steps", 0)


@contextlib.contextmanager
def capturing():
    """A CUDA graph capture around the block: the emulator's capture setting, or torch.cuda.graph on a GPU."""
    if EMULATED:
        torch.ops.fastffnn._emu_configure("capturing", 1)
        try:
            yield
        finally:
            torch.ops.fastffnn._emu_configure("capturing", 0)
        return
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        yield


def launched_kernels(fn) -> list[str]:
    """The names of the CUDA kernels `fn` launches, in order."""
    if EMULATED:
        torch.ops.fastffnn._emu_launches(True)
        fn()
        return [line.split()[0] for line in torch.ops.fastffnn._emu_launches(True)]
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """`t` (float32) as cvt.rna.tf32.f32 rounds it: to 10 mantissa bits, ties away from zero."""
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = ((bits + 0x1000) & ~0x1FFF) & 0xFFFFFFFF
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return torch.where(torch.isfinite(t), bits.view(torch.float32), t)


# ---------------------------------------------------------------- references
def _act(a, activation, relu_mask):
    if activation == "relu" and relu_mask is not None:
        return a * relu_mask  # ReLU with the derivative `relu_mask` (a constant)
    return ref.ACTIVATIONS[activation](a)


def ref_linear_act(x, w, b, activation="tanh", relu_mask=None):
    return _act(F.linear(x, w, b), activation, relu_mask)


def ref_ffnn(x, Vw, Vb, Ww, Wb, activation="tanh", log=False, relu_mask=None):
    return ref.linear_softmax(_act(F.linear(x, Vw, Vb), activation, relu_mask), Ww, Wb, log)


def ref_ffnn_nll(x, Vw, Vb, Ww, Wb, target, activation="tanh", reduction="mean", relu_mask=None):
    logits = F.linear(_act(F.linear(x, Vw, Vb), activation, relu_mask), Ww, Wb)
    return ref.softmax_nll(logits, target, reduction)


# ---------------------------------------------------------------- comparison
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same_bits(runs: list[list[torch.Tensor]], what: str) -> None:
    for s, run in enumerate(runs[1:], start=1):
        for i, (a, b) in enumerate(zip(runs[0], run)):
            assert a.shape == b.shape and torch.equal(_bits(a), _bits(b)), (
                f"{what}: result {i} differs between thread schedule 0 and {s}: a race in a kernel "
                f"(max difference {(a.double() - b.double()).abs().nan_to_num(float('inf')).max().item():.3g})"
            )


def assert_close(ours: torch.Tensor, expected: torch.Tensor, tol: float, what: str, magnitude: float = 0.0,
                 atol: float = 0.0) -> None:
    """Normwise comparison (scale: max|expected|, at least `magnitude`; plus `atol`); NaN and infinities must
    sit where the reference has them."""
    ours = ours.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert ours.shape == expected.shape, f"{what}: shape {tuple(ours.shape)}, expected {tuple(expected.shape)}"
    unwritten = torch.isnan(ours) & ~torch.isnan(expected)
    assert not unwritten.any(), (
        f"{what}: NaN at {unwritten.sum().item()} of {ours.numel()} elements where the reference has numbers "
        f"(first at {tuple(unwritten.nonzero()[0].tolist())}): an element never written, or read from poison")
    assert not (torch.isnan(expected) & ~torch.isnan(ours)).any(), f"{what}: a number where the reference has NaN"
    inf = torch.isinf(expected)
    assert torch.equal(ours[inf], expected[inf]), f"{what}: infinities differ"
    finite = torch.isfinite(expected)
    if not finite.any():
        return
    err = (ours[finite] - expected[finite]).abs().max().item()
    scale = max(expected[finite].abs().max().item(), magnitude)
    assert err <= tol * scale + atol, f"{what}: max error {err:.3g} > {tol:.3g} x max|reference| {scale:.3g}"


def check(ours_fn, ref_fn, inputs64, mode, *, K, grad=True, constant=(), relu_hidden=None, layers=1):
    """Runs ours on the device in `mode` and the float64 reference from the same rounded operands, and compares
    the output and every gradient (under each emulated thread schedule, which must agree bit for bit).

    Floating inputs require grad, except those at the positions in `constant`. For 'tf32', inputs 0 and 1 (the
    first layer's input and weight) reach the reference rounded to TF32. `relu_hidden(*device_inputs)`, for
    ReLU networks, gives the kernel's hidden activations; the reference then takes ReLU's derivative from them
    at units within rounding of the kink (module docstring). `ref_fn` takes `relu_mask=` then.
    """
    dtype = MODES[mode][0]
    # each layer of a deeper network rounds its output (forward) and its gradient (backward) to the dtype
    # once more, so the bound grows with the number of layers
    tol = tolerance(mode, K) * max(layers / 2, 1)
    rounded = [t if t is None else (t.to(dtype) if t.is_floating_point() else t) for t in inputs64]
    wants = [t is not None and t.is_floating_point() and i not in constant for i, t in enumerate(rounded)]
    ref_in = []
    for i, (t, w) in enumerate(zip(rounded, wants)):
        if t is not None and t.is_floating_point():
            t = tf32_round(t) if mode == "tf32" and i in (0, 1) else t
            t = t.double().requires_grad_(w)
        ref_in.append(t)
    dev_in = [t if t is None else (t.to(DEVICE).requires_grad_(w) if t.is_floating_point() else t.to(DEVICE))
              for t, w in zip(rounded, wants)]
    with precision(mode), poisoned_allocations():
        ref_kwargs = {}
        if relu_hidden is not None:
            x, w, b = ref_in[0].detach(), ref_in[1].detach(), ref_in[2]
            a = F.linear(x, w, None if b is None else b.detach())
            bound = tolerance(mode, x.shape[-1]) * (F.linear(x.abs(), w.abs(), None if b is None else b.detach().abs()))
            with torch.no_grad():
                kernel_on = relu_hidden(*[t if t is None else t.detach() for t in dev_in]).double().cpu() > 0
            ref_kwargs["relu_mask"] = torch.where(a.abs() <= bound, kernel_on, a > 0).double()
        expected = ref_fn(*ref_in, **ref_kwargs)
        with torch.no_grad():
            on_abs = ref_fn(*[t.detach().abs() if t is not None and t.is_floating_point() else t for t in ref_in],
                            **ref_kwargs)
            finite_abs = on_abs[torch.isfinite(on_abs)]
            magnitude = finite_abs.abs().max().item() if finite_abs.numel() else 0.0
        seed = torch.randn_like(expected).to(dtype).double()  # the device gets it rounded to its dtype
        leaves_ref = [t for t in ref_in if t is not None and t.requires_grad]
        g_ref = torch.autograd.grad(expected, leaves_ref, seed) if grad and leaves_ref else ()
        runs = []
        for schedule in SCHEDULES:
            set_schedule(schedule)
            poison()
            ours = ours_fn(*dev_in)
            results = [ours.detach()]
            leaves = [t for t in dev_in if t is not None and t.requires_grad]
            if grad and leaves:
                poison()
                results += [g.detach() for g in torch.autograd.grad(ours, leaves, seed.to(ours.dtype).to(DEVICE))]
            runs.append(results)
        set_schedule(0 if EMULATED else None)
    assert_same_bits(runs, "output and gradients")
    atol = 4 * ROUNDS[mode] * subnormal_spacing(mode)
    assert_close(runs[0][0], expected, tol, "output", magnitude, atol)
    for i, (a, b) in enumerate(zip(runs[0][1:], g_ref)):
        assert_close(a, b, tol, f"gradient {i}", atol=atol)
