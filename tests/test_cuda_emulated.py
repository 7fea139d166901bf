"""The CUDA kernels, run on the CPU by the CUDA emulator, and the proof that those tests can fail.

1. tests/test_cuda.py (the GPU tests) and tests/emulated/ run in a subprocess under
   FASTFFNN_BACKEND=emulated: the kernel sources of csrc/cuda/ compiled as host C++ against the emulator in
   csrc/cuda/emulation/ (threads as fibers, barriers, warp shuffles, mma.sync and cvt.rna.tf32 to the PTX
   ISA's layouts, poisoned shared memory), every case under three thread schedules.
2. Mutants: csrc/ with one bug planted (a dropped __syncthreads, swapped mma fragment registers, a partial
   shuffle, an output element never written, threads exiting before a barrier, a missing barrier between
   reading weights and updating them) must fail the tests that
   cover it, each with the failure the harness promises.

The build is made through a symbolic link to csrc/ (the real files); for the mutants the link is replaced by
a copy at the same path, with the files' times kept, so that each mutant recompiles only what its file
reaches. A subprocess, because the emulated library registers the same `fastffnn` ops as the CPU one this
process has loaded. What the emulation cannot show: timing, the tensor cores' own rounding and summation
order, and what ptxas makes of the code (README, "CUDA emulator").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def run_pytest(args: list[str], timeout: float, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTFFNN_BACKEND="emulated", **env_extra)
    env.pop("FASTFFNN_SANITIZE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def report(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout (tail)\n{r.stdout[-6000:]}\n--- stderr (tail)\n{r.stderr[-3000:]}"


def passed_count(r: subprocess.CompletedProcess) -> int:
    m = re.search(r"(\d+) passed", r.stdout)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """base/csrc, a link to the real csrc/, and a build cache of its own: (path, environment)."""
    base = tmp_path_factory.mktemp("emulated")
    (base / "csrc").symlink_to(CSRC, target_is_directory=True)
    return base / "csrc", {"FASTFFNN_SOURCE_DIR": str(base / "csrc"), "TORCH_EXTENSIONS_DIR": str(base / "cache")}


def test_the_cuda_tests_pass_on_the_emulator(sources):
    _, env = sources
    r = run_pytest(["tests/test_cuda.py", "tests/emulated"], timeout=1800, **env)
    assert r.returncode == 0, report(r)
    # every CUDA test ran (none skipped for want of a GPU, but the thirteen that need real CUDA graphs, devices or
    # CUDA autocast)
    assert passed_count(r) >= 1100, report(r)
    skipped = re.search(r"(\d+) skipped", r.stdout)
    assert skipped is None or int(skipped.group(1)) <= 13, report(r)


# (name, file under csrc/, original text, planted bug, tests that must catch it, what their failure says).
# Ordered so that restoring one mutant's file costs no build of its own: the mutants of one file follow each
# other, and the header that most files include (common.cuh) comes last, so everything is rebuilt once.
MUTANTS = [
    ("dropped-syncthreads", "cuda/fused_mlp.cu",
     "      Tile<M>::stage(acc, xs, layout.x_stride, region, v_stride, width, warp, lane);\n      __syncthreads();\n",
     "      Tile<M>::stage(acc, xs, layout.x_stride, region, v_stride, width, warp, lane);\n",
     # 300 inputs: ten stages, so the next stage's loads overwrite what a slower warp still reads
     "test_ffnn and fused-tanh-300-255-63-95-float32", r"differs between thread schedule \d and \d: a race"),
    ("swapped-fragment", "cuda/fused_mlp.cu",
     "          a[mt][1] = tf32_bits(x_at(r + 8, kk + t));\n          a[mt][2] = tf32_bits(x_at(r, kk + t + 4));\n",
     "          a[mt][1] = tf32_bits(x_at(r, kk + t + 4));\n          a[mt][2] = tf32_bits(x_at(r + 8, kk + t));\n",
     "test_ffnn and fused-tanh-7-100-5-33-tf32", r"output: max error"),
    ("unwritten-output", "cuda/fused_mlp.cu",
     "      if (c < classes) out[gr * classes + c] = static_cast<T>(log ? z[q] - shift : e[q] * inv);\n",
     "      if (c < classes - 1) out[gr * classes + c] = static_cast<T>(log ? z[q] - shift : e[q] * inv);\n",
     "test_ffnn and fused-tanh-7-100-5-33-float32", r"NaN at \d+ of \d+ elements"),
    ("exit-before-barrier", "cuda/epilogues.cu",
     "  if (partial == nullptr) return;  // the same for the whole block\n",
     "  if (col >= n) return;\n",
     "test_linear_ops and 33-300-100-tanh-float32", r"rows_with_colsum_kernel .* exited while .* waits at __syncthreads"),
    ("input-gradient-race", "cuda/row_fit.cu",
     "      __syncthreads();  // the products above read the weights before they move\n",
     "",
     # threads update weights that others still read for the gradient below them, in some schedules first
     "test_fit_at_batch_one_is_one_block_launch_and_the_loop_of_train_step and adam-f64",
     r"Tensor-likes are not close|differs between thread schedule \d and \d: a race"),
    ("partial-shuffle", "cuda/common.cuh",
     "  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);\n",
     "  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, offset);\n",
     "test_softmax_nll and 33-2-mean-index-float32", r"__shfl_xor_sync at .*common.cuh:\d+: .* reads lane \d+, outside the mask"),
]
SELECTIONS = sorted({m[4] for m in MUTANTS})
SELECTION = " or ".join(f"({s})" for s in SELECTIONS)


@pytest.fixture(scope="module")
def mutable_copy(sources):
    """The link replaced by a copy of csrc/ at the same path (the files' times kept), checked unmutated."""
    link, env = sources
    link.unlink()
    shutil.copytree(CSRC, link, copy_function=shutil.copy2)
    r = run_pytest(["tests/test_cuda.py", "-k", SELECTION], timeout=1200, **env)
    assert r.returncode == 0 and passed_count(r) == len(SELECTIONS), "the unmutated copy fails:\n" + report(r)
    return link, env


@pytest.mark.parametrize("name,file,original,bug,selection,failure", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_a_planted_kernel_bug_fails_the_tests(mutable_copy, name, file, original, bug, selection, failure):
    src, env = mutable_copy
    path = src / file
    text = path.read_text()
    assert text.count(original) == 1, f"{name}: the text to mutate is not (once) in {file}; update MUTANTS"
    path.write_text(text.replace(original, bug))
    try:
        r = run_pytest(["tests/test_cuda.py", "-x", "-k", selection], timeout=900, **env)
    finally:
        path.write_text(text)
    assert "BuildError" not in r.stdout + r.stderr, f"{name} did not build:\n" + report(r)
    assert r.returncode != 0, f"{name}: the tests passed with the bug planted\n" + report(r)
    assert re.search(failure, r.stdout), f"{name}: failed, but not as expected ({failure!r})\n" + report(r)
