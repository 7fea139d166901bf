"""Builds the native extension on first use, caches it, and loads it.

`import fastffnn` never compiles: the first call of an op calls
``fastffnn.ensure_loaded`` (fastffnn/_runtime.py), which calls :func:`load`
here, which

1. loads the cached library straight away when its stamp (a hash of the
   sources, the flags, the compiler and torch) matches, which takes well under
   a second;
2. otherwise takes an exclusive ``flock`` on the cache directory (so that two
   processes building at once take turns, and a lock held by a killed process
   vanishes with it), builds with ``torch.utils.cpp_extension`` and ninja,
   writes the stamp and loads the result.

This module only builds and loads; ``ensure_loaded`` then registers the ops'
fake kernels (fastffnn/_fake.py).

The cache directory is ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) / ``fastffnn-<python>-<torch>-<backend>-<simd>``,
where ``<simd>`` is the SIMD level ATen uses on this CPU (avx512, avx2 or
default), since the library is compiled for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
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
    """Where the C++ sources are: beside the package once installed, else the repository's csrc/.

    FASTFFNN_SOURCE_DIR names another place (tests/test_cuda_emulated.py builds deliberately broken
    copies); it is taken as given, symbolic links unresolved, so that the build's paths stay the same
    when a link there is replaced by a copy.
    """
    override = os.environ.get("FASTFFNN_SOURCE_DIR")
    if override:
        path = Path(override).absolute()
        if not (path / "registration.cpp").is_file():
            raise BuildError(f"fastffnn: FASTFFNN_SOURCE_DIR={override} holds no fastffnn sources (no registration.cpp)")
        return path
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    raise BuildError(
        f"fastffnn: the C++ sources are missing (looked in {here / 'csrc'} and {here.parent / 'csrc'}); "
        "reinstall fastffnn"
    )


def sources() -> list[Path]:
    """The translation units of this machine's build: the CPU kernels, plus the CUDA ones in a CUDA build."""
    root = source_dir()
    files = sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))
    if backend() == "cuda":
        files += sorted((root / "cuda").glob("*.cpp")) + sorted((root / "cuda").glob("*.cu"))
    elif backend() == "emulated":
        # the CUDA backend, the emulator, and csrc/cuda/*.cu compiled as host
        # C++ (each wrapper includes its .cu)
        files += sorted((root / "cuda").glob("*.cpp")) + sorted((root / "cuda" / "emulation").glob("*.cpp"))
    return files


def _headers() -> list[Path]:
    """The files the translation units include, which the stamp hashes too."""
    root = source_dir()
    included = sorted(root.rglob("*.h")) + sorted(root.rglob("*.cuh"))
    if backend() == "emulated":
        included += sorted((root / "cuda").glob("*.cu"))  # the emulation wrappers #include them
    return included


def cache_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "torch_extensions"


_notices: set[str] = set()


def _notice_once(msg: str) -> None:
    if msg not in _notices:
        _notices.add(msg)
        _log(msg)


def cuda_home() -> Path | None:
    """The CUDA toolkit: $CUDA_HOME or $CUDA_PATH, else the one nvcc belongs to, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # torch guesses the parent of nvcc's directory, which is wrong for a
        # /usr/local/bin/nvcc wrapper; insist on a directory with the headers.
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for c in candidates:
        if (c / "bin" / "nvcc").is_file() and (c / "include" / "cuda_runtime.h").is_file():
            return c
    return None


def nvcc_version(home: Path) -> str | None:
    """The toolkit's CUDA version, like '13.0', from `nvcc --version`."""
    try:
        out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def backend() -> str:
    """'cuda', 'cpu' or 'emulated': the kernels this machine's build contains.

    FASTFFNN_BACKEND=cpu or =cuda forces one (a forced CUDA build needs no GPU,
    which is how CI compiles the CUDA kernels); the default, auto, builds CUDA
    kernels when torch has CUDA, a GPU is visible and a CUDA toolkit is found,
    and otherwise the CPU kernels, saying why once. FASTFFNN_BACKEND=emulated
    is for testing: the CUDA kernels compiled as host C++ and run on the CPU
    by the emulator in csrc/cuda/emulation/, CPU tensors taking the CUDA
    route (tests/test_cuda_emulated.py); no GPU or nvcc needed.
    """
    choice = os.environ.get("FASTFFNN_BACKEND", "auto").lower()
    if choice not in ("auto", "cpu", "cuda", "emulated"):
        raise BuildError(f"fastffnn: FASTFFNN_BACKEND must be auto, cpu, cuda or emulated, got {choice!r}")
    if choice != "auto":
        return choice
    if torch.version.cuda is None:
        return "cpu"
    if not torch.cuda.is_available():
        _notice_once("no CUDA GPU is visible: using the CPU kernels only")
        return "cpu"
    if cuda_home() is None:
        _notice_once(
            f"a CUDA GPU is visible but no CUDA toolkit (nvcc) was found: using the CPU kernels only. "
            f"Install the CUDA {torch.version.cuda} toolkit and set CUDA_HOME to use the GPU"
        )
        return "cpu"
    return "cuda"


def cuda_arch_list() -> str:
    """The GPU architectures to compile for: TORCH_CUDA_ARCH_LIST, else the visible GPUs'."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    raise BuildError(
        "fastffnn: no GPU is visible to pick the CUDA architecture from; set TORCH_CUDA_ARCH_LIST "
        "(for example TORCH_CUDA_ARCH_LIST=9.0 for H100/H200)"
    )


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


def _backend_key() -> str:
    if backend() in ("cpu", "emulated"):
        return backend()
    archs = re.sub(r"[^0-9A-Za-z.]+", "_", cuda_arch_list())
    return f"cuda{torch.version.cuda}-sm{archs}"


def build_dir() -> Path:
    """The cache directory for this Python, torch, backend (with CUDA version and GPU archs) and SIMD level."""
    torch_version = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    checking = "".join(f"-{name}san" for name in sanitizers())
    return cache_root() / f"fastffnn-{py}-torch{torch_version}-{_backend_key()}-{cpu_capability().lower()}{checking}"


def library_path() -> Path:
    return build_dir() / f"{LIBRARY_NAME}.so"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def sanitizers() -> list[str]:
    """The sanitizers of a checking build (FASTFFNN_SANITIZE=address,undefined), else none.

    Such a build lives in a cache directory of its own; benchmarks/sanitize_cpu.sh
    runs the tests against it.
    """
    allowed = {"address", "undefined", "leak"}
    wanted = [s.strip() for s in os.environ.get("FASTFFNN_SANITIZE", "").split(",") if s.strip()]
    unknown = [s for s in wanted if s not in allowed]
    if unknown:
        raise BuildError(f"fastffnn: FASTFFNN_SANITIZE may name {sorted(allowed)}, got {unknown}")
    return wanted


def _sanitizer_flags() -> list[str]:
    names = sanitizers()
    if not names:
        return []
    # -fno-sanitize-recover: the first finding stops the process, so no report goes unnoticed.
    # -g1: line tables only, which is all a report's stack needs (file:line); full -g took a third
    # longer to compile (train.cpp: 79 s against 52 s on the 2-core VM).
    return [f"-fsanitize={','.join(names)}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g1"]


def cflags() -> list[str]:
    # -fopenmp turns on the OpenMP path of at::parallel_for, which torch's
    # own kernels use too; without it every epilogue would run on one thread.
    # Without a CPU_CAPABILITY, at::vec falls back to scalar loops, and tanh
    # and exp become libm calls, several times slower than ATen's own.
    # A checking build (FASTFFNN_SANITIZE) is -O1, as sanitizer builds usually are: at -O3 with -g its
    # compile took about 400 s of CI's 30 minutes on the 2-core machine.
    level = "-O1" if sanitizers() else "-O3"
    flags = [level, "-fopenmp", *_CAPABILITY_FLAGS.get(cpu_capability(), []), *_sanitizer_flags()]
    # FASTFFNN_EXTRA_CFLAGS comes last, so it can override the above (tests/test_packaging.py builds at -O0)
    flags += shlex.split(os.environ.get("FASTFFNN_EXTRA_CFLAGS", ""))
    if backend() == "emulated":
        # the emulator's shim headers (cuda_runtime.h, c10/cuda/...) come before torch's
        include = source_dir() / "cuda" / "emulation" / "include"
        flags += ["-DFASTFFNN_WITH_CUDA", "-DFASTFFNN_CUDA_EMULATION", f"-I{include}"]
    return flags


def ldflags() -> list[str]:
    return ["-fopenmp", *_sanitizer_flags()]


def cuda_cflags() -> list[str]:
    return ["-O3", "-DFASTFFNN_WITH_CUDA", "-lineinfo"]


def _ptxas_report_requested() -> bool:
    # -Xptxas=-v prints registers, shared memory and spills of every kernel;
    # it does not change the library, so it is not part of the stamp.
    return os.environ.get("FASTFFNN_PTXAS_REPORT", "0") not in ("", "0")


def _cuda_include_paths() -> list[str]:
    # ATen's CUDA headers want cuBLAS/cuSPARSE headers that some toolkits
    # lack; CUDA builds of torch carry them in the nvidia-* wheels.
    import site

    found = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cusparse/include"):
            path = Path(base) / sub
            if path.is_dir():
                found.append(str(path))
    return found


def stamp() -> str:
    """Hash of everything the built library depends on."""
    h = hashlib.sha256()
    for path in sources() + _headers():
        h.update(str(path.relative_to(source_dir())).encode())
        h.update(path.read_bytes())
    extra = (*cuda_cflags(), cuda_arch_list(), str(cuda_home())) if backend() == "cuda" else ()
    for part in (*cflags(), *ldflags(), *extra, _compiler(), torch.__version__, sys.version):
        h.update(part.encode())
    return h.hexdigest()


def _stamp_path() -> Path:
    return build_dir() / f"{LIBRARY_NAME}.stamp"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_current(expected: str) -> bool:
    """Whether the cached library was built from these sources and flags, and is the file that build wrote.

    The stamp holds the inputs' hash and the library's own hash, so a library
    that was truncated or corrupted after its build (a full disk, a killed
    copy) is rebuilt instead of loaded.
    """
    try:
        lines = _stamp_path().read_text().split()
        return len(lines) == 2 and lines[0] == expected and lines[1] == _file_digest(library_path())
    except OSError:
        return False


def _log(msg: str) -> None:
    print(f"fastffnn: {msg}", file=sys.stderr, flush=True)


def _check_cuda_toolchain() -> Path:
    if torch.version.cuda is None:
        raise BuildError(
            f"fastffnn: FASTFFNN_BACKEND=cuda but this torch ({torch.__version__}) has no CUDA support; "
            "install a CUDA build of torch"
        )
    home = cuda_home()
    if home is None:
        raise BuildError(
            f"fastffnn: no CUDA toolkit found (looked at $CUDA_HOME, nvcc on PATH and /usr/local/cuda); install "
            f"the CUDA {torch.version.cuda} toolkit and set CUDA_HOME to its directory, or set FASTFFNN_BACKEND=cpu"
        )
    found = nvcc_version(home)
    if found is None or found.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise BuildError(
            f"fastffnn: torch was built with CUDA {torch.version.cuda} but the toolkit in {home} is CUDA "
            f"{found or 'of unknown version'}; install the CUDA {torch.version.cuda.split('.')[0]}.x toolkit and "
            "set CUDA_HOME to it, or install a torch built for this toolkit"
        )
    return home


def _check_toolchain() -> None:
    from torch.utils import cpp_extension

    if backend() == "cuda":
        # cpp_extension reads its own CUDA_HOME guess, which can be wrong.
        cpp_extension.CUDA_HOME = str(_check_cuda_toolchain())
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
        # A name of this process's and thread's own: two first builds racing
        # (torchrun's workers) must not unlink each other's probe.
        probe = path / f".write-test-{os.getpid()}-{threading.get_ident()}"
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
    # Older torch (< 2.14) guards its builds with a `lock` file whose mere
    # existence makes cpp_extension wait forever; newer torch holds an OS lock
    # on it instead, which dies with its process. We hold our flock, so no
    # fastffnn build is running: under the old scheme, a file left behind
    # belongs to a build that was killed halfway.
    stale = directory / "lock"
    if not hasattr(cpp_extension, "FileLock") and stale.exists():
        _log(f"removing the stale build lock {stale} left by an interrupted build")
        stale.unlink(missing_ok=True)
    cuda = backend() == "cuda"
    kind = f"CPU + CUDA (sm {cuda_arch_list()})" if cuda else (
        "CPU + emulated CUDA" if backend() == "emulated" else "CPU")
    _log(f"building the {kind} extension in {directory} (first use; this takes a few minutes)")
    start = time.perf_counter()
    env_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    verbose = os.environ.get("FASTFFNN_VERBOSE", "0") not in ("", "0") or _ptxas_report_requested()
    try:
        if cuda:
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(p) for p in sources()],
            extra_cflags=cflags() + (["-DFASTFFNN_WITH_CUDA"] if cuda else []),
            extra_cuda_cflags=cuda_cflags() + (["-Xptxas=-v"] if _ptxas_report_requested() else []) if cuda else None,
            extra_include_paths=_cuda_include_paths() if cuda else None,
            extra_ldflags=ldflags(),
            build_directory=str(directory),
            is_python_module=False,
            with_cuda=cuda,
            verbose=verbose,
        )
    except Exception as e:  # cpp_extension raises RuntimeError / CalledProcessError
        log = str(e)
        if verbose:  # cpp_extension printed the compiler's output instead of keeping it
            raise BuildError("fastffnn: building the C++ extension failed; the compiler's output is above") from None
        log_path = directory / "build.log"
        log_path.write_text(log)
        raise BuildError(
            f"fastffnn: building the C++ extension failed: {first_error_line(log)}\n"
            f"The full log is in {log_path}. Set FASTFFNN_VERBOSE=1 to see the compiler's output."
        ) from None
    finally:
        if cuda:
            if env_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = env_arch
    _stamp_path().write_text(f"{expected_stamp}\n{_file_digest(library_path())}\n")
    _log(f"built in {time.perf_counter() - start:.1f} s")


def _load_library(path: Path) -> None:
    torch.ops.load_library(str(path))


def aot_library() -> Path | None:
    """The ahead-of-time build (``FASTFFNN_BUILD_EXT=1 pip install``), if there is one that fits this process.

    It fits when it was built for this torch version, backend and SIMD level;
    otherwise it is ignored (said once) and the JIT build is used.
    """
    here = Path(__file__).resolve().parent
    info_path = here / "_C_build.json"
    libraries = sorted(here.glob("_C*.so"))
    if not info_path.is_file() or not libraries:
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    wanted = {"torch": torch.__version__, "backend": backend(), "simd": cpu_capability()}
    if any(info.get(k) != v for k, v in wanted.items()):
        built = ", ".join(f"{k} {info.get(k)}" for k in wanted)
        _log(f"ignoring the ahead-of-time build in {here} (built for {built}; this process has "
             f"{', '.join(f'{k} {v}' for k, v in wanted.items())}); building on first use instead")
        return None
    return libraries[0]


def load() -> None:
    """Build (if needed) and load the extension. Idempotent."""
    global _loaded_from
    if _loaded_from is not None:
        return
    with _lock:
        if _loaded_from is not None:
            return
        aot = aot_library()
        expected = stamp() if aot is None else ""
        directory = build_dir()
        if aot is not None:
            _load_library(aot)
        elif _is_current(expected):
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
                        if library_path().exists():
                            # out of date or damaged: removed, so that ninja relinks it even
                            # when its timestamp looks newer than the objects
                            _log(f"the cached library {library_path()} does not match its stamp; rebuilding it")
                            library_path().unlink()
                        _build(expected)  # cpp_extension.load also loads it
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        _loaded_from = aot if aot is not None else library_path()


def loaded_library() -> Path | None:
    """The library this process loaded, or None before the first op call."""
    return _loaded_from
