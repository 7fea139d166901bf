"""Packaging: ``pip install .`` ships the C++ sources and py.typed, the version is readable, and the optional
ahead-of-time build (``FASTFFNN_BUILD_EXT=1``) produces the same ops without a JIT build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastffnn

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import importlib.metadata, sys, torch, fastffnn
from fastffnn import _build, selfcheck
assert importlib.metadata.version("fastffnn") == fastffnn.__version__, importlib.metadata.version("fastffnn")
x = torch.randn(5, 7, dtype=torch.float64)
model = fastffnn.FastFFNN(7, 6, 3, dtype=torch.float64)
torch.testing.assert_close(model(x), torch.softmax(model.W(torch.tanh(model.V(x))), -1))
assert all(r.ok for r in selfcheck.run())
print("source_dir", _build.source_dir())
print("loaded", _build.loaded_library())
"""


def _pip_install(target: Path, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
           str(target), str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _run_installed(target: Path, cwd: Path, env_extra: dict | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(target), **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_pip_install_ships_sources_and_types(tmp_path):
    target = tmp_path / "site"
    _pip_install(target)
    pkg = target / "fastffnn"
    for rel in ("csrc/registration.cpp", "csrc/ops.h", "csrc/cpu/row_ops.h", "csrc/cuda/register_cuda.cpp",
                "csrc/cuda/fused_mlp.cu", "py.typed"):
        assert (pkg / rel).is_file(), rel
    assert list(target.glob("fastffnn-*.dist-info"))
    # Outside the repository, the installed copy builds (or finds its cached build) from its own sources.
    out = _run_installed(target, tmp_path)
    assert f"source_dir {pkg / 'csrc'}" in out


def test_version_is_one_number_everywhere():
    # The version a wheel gets is what setup.py reports; it must be the
    # package's __version__, and no other file may spell out a version of its own.
    reported = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
    assert reported == fastffnn.__version__
    for path in [ROOT / "setup.py", *(ROOT / "fastffnn").rglob("*.py")]:
        if path.name == "__init__.py" and path.parent.name == "fastffnn":
            continue
        assert fastffnn.__version__ not in path.read_text(), f"{path} spells out the version"


@pytest.mark.skipif(sys.platform != "linux", reason="the ahead-of-time build is exercised on Linux")
def test_ahead_of_time_build_produces_the_same_ops(tmp_path):
    target = tmp_path / "site"
    # at -O0 (FASTFFNN_EXTRA_CFLAGS comes after the -O3): what is tested is the packaging, not the code, and
    # the optimised compile took 200 s of CI's 30 minutes
    _pip_install(target, env=dict(os.environ, FASTFFNN_BUILD_EXT="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"),
                                  FASTFFNN_EXTRA_CFLAGS="-O0"))
    libraries = list((target / "fastffnn").glob("_C*.so"))
    assert libraries and (target / "fastffnn" / "_C_build.json").is_file()
    empty_cache = tmp_path / "no-jit"
    empty_cache.mkdir()
    out = _run_installed(target, tmp_path, {"TORCH_EXTENSIONS_DIR": str(empty_cache), "FASTFFNN_BACKEND": "cpu"})
    assert f"loaded {libraries[0]}" in out
    assert not any(empty_cache.iterdir()), "the ahead-of-time build should leave nothing to JIT-build"
