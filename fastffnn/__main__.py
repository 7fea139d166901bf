"""``python -m fastffnn``: the environment, then a self-check of every op against stock PyTorch.

    python -m fastffnn          environment + build (if needed) + self-check
    python -m fastffnn info     environment only; builds nothing
    python -m fastffnn train    train the lecture's classifier on real data (train --help)
    python -m fastffnn bench    the throughput benchmark against stock PyTorch (bench --help)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

import torch

from . import __version__, _build, selfcheck
from ._platform import cpu_name
from ._runtime import ensure_loaded


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "not found"


def print_environment() -> None:
    cxx = _build._compiler()
    rows = [
        ("fastffnn", __version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("device", f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"),
        ("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"),
        ("compiler", f"{shutil.which(cxx) or cxx}: {_first_line([cxx, '--version'])}"),
        ("ninja", _first_line(["ninja", "--version"]) if shutil.which("ninja") else "not found"),
        ("build directory", str(_build.build_dir())),
        ("cached build", "up to date" if _build._is_current(_build.stamp()) else "none yet (built on first use)"),
        ("kernels", _build.backend()),
        ("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", "(unset)")),
        ("MAX_JOBS", os.environ.get("MAX_JOBS", "(unset)")),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastffnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="check", choices=["check", "info", "train", "bench"])
    args = parser.parse_args(argv)
    try:
        print_environment()
        if args.command == "info":
            return 0
        ensure_loaded()
    except _build.BuildError as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    print(f"\nloaded {_build.loaded_library()}\n\nself-check against stock PyTorch (float64, forward and gradients):")
    results = selfcheck.run()
    width = max(len(r.op) for r in results)
    for r in results:
        print(f"  {r.op:<{width}}  max |error| {r.max_abs_error:.1e}  {'ok' if r.ok else 'FAILED'}")
    failed = [r.op for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
