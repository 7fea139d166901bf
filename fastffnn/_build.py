"""Builds the native extension on first use, caches it, and loads it.

`import fastffnn` never compiles: the first call of an op calls
:func:`ensure_loaded`, which

1. loads the cached library straight away when its stamp (a hash of the
   sources, the flags, the compiler and torch) matches, which takes well under
   a second;
2. otherwise takes an exclusive ``flock`` on the cache directory (so that two
   processes building at once take turns, and a lock held by a killed process
   vanishes with it), builds with ``torch.utils.cpp_extension`` and ninja,
   writes the stamp and loads the result;
3. then registers the Python side of the ops: their fake kernels and autograd
   formulas.

The cache directory is ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) / ``fastffnn-<python>-<torch>-<backend>-<simd>``,
where ``<simd>`` is the SIMD level ATen uses on this CPU (avx512, avx2 or
default), since the library is compiled for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

LIBRARY_NAME = "fastffnn_ext"

_lock = threading.Lock()
_loaded_from: Path | None = None


class BuildError(RuntimeError):
    """The native extension could not be built or loaded; the message says why and how to fix it."""


def source_dir() -> Path:
    """Where the C++ sources are: beside the package once installed, else the repository's csrc/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    raise BuildError(
        f"fastffnn: the C++ sources are missing (looked in {here / 'csrc'} and {here.parent / 'csrc'}); "
        "reinstall fastffnn"
    )


def sources() -> list[Path]:
    """The translation units of the CPU extension."""
    root = source_dir()
    return sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))


def _headers() -> list[Path]:
    root = source_dir()
    return sorted(root.rglob("*.h"))


def cache_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "torch_extensions"


def backend() -> str:
    """The kind of build this machine gets; only the CPU build exists so far."""
    return "cpu"


def cpu_capability() -> str:
    """The SIMD level ATen runs its own kernels at here: AVX512, AVX2 or DEFAULT.

    It follows ATEN_CPU_CAPABILITY when that is set, as ATen does.
    """
    return torch.backends.cpu.get_cpu_capability()


# The compiler flags that let at::vec::Vectorized use each SIMD level, the
# same ones ATen compiles its own kernels with for that level.
_CAPABILITY_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


def build_dir() -> Path:
    """The cache directory for this Python, torch, backend and SIMD level."""
    torch_version = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"fastffnn-{py}-torch{torch_version}-{backend()}-{cpu_capability().lower()}"


def library_path() -> Path:
    return build_dir() / f"{LIBRARY_NAME}.so"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def cflags() -> list[str]:
    # -fopenmp turns on the OpenMP path of at::parallel_for, which torch's
    # own kernels use too; without it every epilogue would run on one thread.
    # Without a CPU_CAPABILITY, at::vec falls back to scalar loops, and tanh
    # and exp become libm calls, several times slower than ATen's own.
    return ["-O3", "-fopenmp", *_CAPABILITY_FLAGS.get(cpu_capability(), [])]


def ldflags() -> list[str]:
    return ["-fopenmp"]


def stamp() -> str:
    """Hash of everything the built library depends on."""
    h = hashlib.sha256()
    for path in sources() + _headers():
        h.update(str(path.relative_to(source_dir())).encode())
        h.update(path.read_bytes())
    for part in (*cflags(), *ldflags(), _compiler(), torch.__version__, sys.version):
        h.update(part.encode())
    return h.hexdigest()


def _stamp_path() -> Path:
    return build_dir() / f"{LIBRARY_NAME}.stamp"


def _is_current(expected: str) -> bool:
    try:
        return library_path().is_file() and _stamp_path().read_text().strip() == expected
    except OSError:
        return False


def _log(msg: str) -> None:
    print(f"fastffnn: {msg}", file=sys.stderr, flush=True)


def _check_toolchain() -> None:
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise BuildError(
            "fastffnn: building the extension needs ninja, which is not installed; "
            "run `pip install ninja`"
        )
    cxx = _compiler()
    if shutil.which(cxx) is None:
        raise BuildError(
            f"fastffnn: no C++ compiler found (looked for {cxx!r}); install one "
            "(for example `apt-get install g++`) or point the CXX environment variable at it"
        )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BuildError(
            f"fastffnn: cannot write the build cache {path} ({e.strerror}); point "
            "TORCH_EXTENSIONS_DIR at a writable directory"
        ) from e


def first_error_line(log: str) -> str:
    """The first compiler or linker error in a build log, or its last line."""
    for line in log.splitlines():
        if re.search(r"\b(error|Error|undefined reference)\b", line) and "Error building extension" not in line:
            return line.strip()
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty build log)"


def _build(expected_stamp: str) -> None:
    from torch.utils import cpp_extension

    directory = build_dir()
    # torch's own build lock: cpp_extension waits forever while this file
    # exists. We hold the flock, so no fastffnn build is running: a file left
    # behind belongs to a build that was killed halfway.
    stale = directory / "lock"
    if stale.exists():
        _log(f"removing the stale build lock {stale} left by an interrupted build")
        stale.unlink(missing_ok=True)
    _log(f"building the C++ extension in {directory} (first use; this takes a minute or two)")
    start = time.perf_counter()
    try:
        cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(p) for p in sources()],
            extra_cflags=cflags(),
            extra_ldflags=ldflags(),
            build_directory=str(directory),
            is_python_module=False,
            verbose=os.environ.get("FASTFFNN_VERBOSE", "0") not in ("", "0"),
        )
    except Exception as e:  # cpp_extension raises RuntimeError / CalledProcessError
        log = str(e)
        log_path = directory / "build.log"
        log_path.write_text(log)
        raise BuildError(
            f"fastffnn: building the C++ extension failed: {first_error_line(log)}\n"
            f"The full log is in {log_path}. Set FASTFFNN_VERBOSE=1 to see the compiler's output."
        ) from None
    _stamp_path().write_text(expected_stamp)
    _log(f"built in {time.perf_counter() - start:.1f} s")


def _load_library(path: Path) -> None:
    torch.ops.load_library(str(path))


# Under torch.compile, Dynamo runs this for real while tracing and records no
# graph for it (its result, None, is a constant), so a first op call inside a
# compiled function builds and loads the library instead of breaking the graph.
@torch.compiler.assume_constant_result
def ensure_loaded() -> None:
    """Build (if needed) and load the extension, then register its Python side. Idempotent."""
    global _loaded_from
    if _loaded_from is not None:
        return
    with _lock:
        if _loaded_from is not None:
            return
        expected = stamp()
        directory = build_dir()
        if _is_current(expected):
            _load_library(library_path())
        else:
            _check_toolchain()
            _make_dir(directory)
            with open(directory / "fastffnn.flock", "w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    if _is_current(expected):  # another process built it while we waited
                        _load_library(library_path())
                    else:
                        _build(expected)  # cpp_extension.load also loads it
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        from . import _fake, autograd

        _fake.register()
        autograd.register()
        _loaded_from = library_path()


def loaded_library() -> Path | None:
    """The library this process loaded, or None before the first op call."""
    return _loaded_from
