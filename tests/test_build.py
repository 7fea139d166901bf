"""The JIT loader: import never compiles, the cache is reused, concurrent first builds agree,
stale locks are cleared, and every failure is one clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastffnn
from fastffnn import _build

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=REPO, **kwargs)


def test_import_never_compiles(tmp_path):
    proc = run_python(
        """
        import fastffnn, fastffnn.ops, fastffnn.module
        m = fastffnn.FastFFNN(3, 4, 2)   # constructing a module builds nothing either
        from fastffnn import _build
        assert _build.loaded_library() is None
        """,
        {"TORCH_EXTENSIONS_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_info_command_builds_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastffnn", "info"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "none yet (built on first use)" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_cached_library_loads_in_well_under_a_second():
    assert _build._is_current(_build.stamp())  # the session fixture built it
    proc = run_python(
        """
        import time, torch, fastffnn
        start = time.perf_counter()
        fastffnn.ensure_loaded()
        print(time.perf_counter() - start)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr
    assert float(proc.stdout) < 0.5


def test_build_dir_is_keyed_by_python_torch_backend_and_simd_level(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    d = _build.build_dir()
    assert d.parent == tmp_path
    assert torch.__version__.split("+")[0] in d.name
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in d.name
    assert d.name.endswith(f"{_build.backend()}-{_build.cpu_capability().lower()}")


def test_two_processes_building_at_once_both_work_and_a_stale_lock_is_cleared(tmp_path):
    # A build killed halfway leaves torch's `lock` file behind; without the
    # cleanup, cpp_extension would wait on it forever.
    code = """
        import torch, fastffnn
        x = torch.randn(4, 3, dtype=torch.float64)
        w = torch.randn(5, 3, dtype=torch.float64)
        torch.testing.assert_close(fastffnn.linear_act(x, w), torch.tanh(x @ w.T))
        print("ok")
        """
    if not _build.build_dir().is_dir():
        pytest.skip("this session loaded an ahead-of-time library: no build objects to race with")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    build_dir = tmp_path / _build.build_dir().name
    # The session's up-to-date objects (conftest built them), without the library and its stamp: the build
    # the two processes race for is then a link, seconds instead of minutes of compiling, and takes the same
    # lock and the same path through the loader.
    shutil.copytree(_build.build_dir(), build_dir, ignore=shutil.ignore_patterns("*.so", "*.stamp", "*lock*"))
    (build_dir / "lock").write_text("")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("extension in") == 1, stderr  # one process built, the other waited and loaded
    assert stderr.count("built in") == 1
    from torch.utils import cpp_extension

    if not hasattr(cpp_extension, "FileLock"):  # torch < 2.14: the file itself is the lock
        assert f"removing the stale build lock {build_dir / 'lock'}" in stderr
        assert not (build_dir / "lock").exists()


def test_the_write_probe_of_racing_processes_is_their_own(tmp_path):
    # Both first builds probe the cache before taking the build lock; with one
    # shared probe name, one process unlinked the other's file and reported a
    # writable cache as unwritable. Two processes probing 3000 times each:
    code = f"""
        from pathlib import Path
        from fastffnn import _build
        for _ in range(3000):
            _build._make_dir(Path({str(tmp_path / "cache")!r}))
        print("ok")
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    assert list((tmp_path / "cache").iterdir()) == []


def test_compile_error_is_one_clear_error_with_the_log(monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    broken = src / "broken.cpp"
    broken.write_text("int ok = 1;\nint broken = ;\n")
    monkeypatch.setattr(_build, "sources", lambda: [broken])
    monkeypatch.setattr(_build, "build_dir", lambda: tmp_path / "build")
    (tmp_path / "build").mkdir()
    with pytest.raises(fastffnn.BuildError) as info:
        _build._build("stamp")
    message = str(info.value)
    assert "broken.cpp:2" in message and "error" in message
    log = tmp_path / "build" / "build.log"
    assert str(log) in message and log.is_file()
    assert not (tmp_path / "build" / f"{_build.LIBRARY_NAME}.stamp").exists()


def test_missing_ninja(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(fastffnn.BuildError, match="pip install ninja"):
        _build._check_toolchain()


def test_missing_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(fastffnn.BuildError, match=r"no C\+\+ compiler found .*/nonexistent/g\+\+.*CXX"):
        _build._check_toolchain()


def test_unwritable_cache_names_the_path_and_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(fastffnn.BuildError, match=r"cannot write the build cache .*a-file.*TORCH_EXTENSIONS_DIR"):
        _build._make_dir(blocker / "cache")


def test_first_error_line():
    log = "[1/3] c++ -c a.cpp\nFAILED: a.o\na.cpp:3:5: error: expected ';'\nb.cpp:9: error: other\n"
    assert _build.first_error_line(log) == "a.cpp:3:5: error: expected ';'"
    assert _build.first_error_line("ld: cannot find -lfoo\n") == "ld: cannot find -lfoo"


# ------------------------------------------------------------------ CUDA
def test_backend_choice(monkeypatch):
    monkeypatch.setenv("FASTFFNN_BACKEND", "cpu")
    assert _build.backend() == "cpu"
    monkeypatch.setenv("FASTFFNN_BACKEND", "cuda")
    assert _build.backend() == "cuda"
    monkeypatch.setenv("FASTFFNN_BACKEND", "gpu")
    with pytest.raises(fastffnn.BuildError, match="FASTFFNN_BACKEND must be auto, cpu, cuda or emulated"):
        _build.backend()
    monkeypatch.delenv("FASTFFNN_BACKEND")
    if not torch.cuda.is_available():
        assert _build.backend() == "cpu"


def test_auto_backend_says_once_why_it_builds_for_the_cpu(monkeypatch, capsys):
    monkeypatch.delenv("FASTFFNN_BACKEND", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_build, "_notices", set())
    assert _build.backend() == "cpu" and _build.backend() == "cpu"
    assert capsys.readouterr().err.count("no CUDA GPU is visible: using the CPU kernels only") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "cuda_home", lambda: None)
    assert _build.backend() == "cpu"
    assert "no CUDA toolkit (nvcc) was found" in capsys.readouterr().err


def test_cuda_build_without_cuda_torch_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(fastffnn.BuildError, match="has no CUDA support; install a CUDA build of torch"):
        _build._check_cuda_toolchain()


def test_missing_cuda_toolkit_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(_build, "cuda_home", lambda: None)
    with pytest.raises(fastffnn.BuildError, match="no CUDA toolkit found .* set CUDA_HOME"):
        _build._check_cuda_toolchain()


def test_cuda_version_mismatch_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(_build, "cuda_home", lambda: tmp_path)
    monkeypatch.setattr(_build, "nvcc_version", lambda home: "13.0")
    with pytest.raises(fastffnn.BuildError, match=r"built with CUDA 12.8 but the toolkit in .* is CUDA 13.0; "
                                                  r"install the CUDA 12.x toolkit"):
        _build._check_cuda_toolchain()
    monkeypatch.setattr(_build, "nvcc_version", lambda home: "12.4")  # a minor difference is fine
    assert _build._check_cuda_toolchain() == tmp_path


def test_cuda_home_prefers_the_environment_then_a_real_toolkit(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert _build.cuda_home() == tmp_path
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home = _build.cuda_home()
    assert home is None or (home / "include" / "cuda_runtime.h").is_file()


def test_cuda_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert _build.cuda_arch_list() == "9.0"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not torch.cuda.is_available():
        with pytest.raises(fastffnn.BuildError, match="set TORCH_CUDA_ARCH_LIST"):
            _build.cuda_arch_list()


def test_cuda_build_dir_names_cuda_version_and_arch(monkeypatch):
    monkeypatch.setenv("FASTFFNN_BACKEND", "cuda")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "-cuda13.0-sm8.0_9.0-" in _build.build_dir().name
    rel = {p.relative_to(_build.source_dir()).as_posix() for p in _build.sources()}
    assert {"cuda/register_cuda.cpp", "cuda/fused_mlp.cu", "cuda/epilogues.cu", "cpu/kernels.cpp"} <= rel
    assert not any(r.startswith("cuda/emulation/") for r in rel)
    monkeypatch.setenv("FASTFFNN_BACKEND", "cpu")
    assert not any(p.relative_to(_build.source_dir()).parts[0] == "cuda" for p in _build.sources())


def test_emulated_backend_compiles_the_cuda_sources_as_host_code(monkeypatch):
    monkeypatch.setenv("FASTFFNN_BACKEND", "emulated")
    assert _build.backend() == "emulated"
    assert "-emulated-" in _build.build_dir().name
    rel = {p.relative_to(_build.source_dir()).as_posix() for p in _build.sources()}
    # the CUDA backend's registration and the emulator; the CPU backend's too (its
    # registration compiles to nothing under emulation; the CPU training step remains)
    assert {"cuda/register_cuda.cpp", "cuda/emulation/emulator.cpp", "cuda/emulation/emulated_fused_mlp.cpp",
            "cuda/emulation/emulated_epilogues.cpp", "cpu/kernels.cpp"} <= rel
    assert not any(p.suffix == ".cu" for p in _build.sources())  # nvcc never runs
    flags = _build.cflags()
    assert "-DFASTFFNN_CUDA_EMULATION" in flags and any(f.endswith("emulation/include") for f in flags)
    # the wrappers #include the .cu files, so a change to a kernel must change the stamp
    assert {"fused_mlp.cu", "epilogues.cu"} <= {p.name for p in _build._headers()}


def test_source_dir_can_be_another_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTFFNN_SOURCE_DIR", str(tmp_path))
    with pytest.raises(fastffnn.BuildError, match="holds no fastffnn sources"):
        _build.source_dir()
    (tmp_path / "registration.cpp").write_text("")
    assert _build.source_dir() == tmp_path.absolute()


def test_corrupted_or_truncated_library_is_rebuilt_not_loaded(tmp_path):
    # A copy of this session's build, whose library is then cut short: the stamp
    # records the library's own hash, so the next first use relinks it.
    source = _build.build_dir()
    copy = tmp_path / source.name
    import shutil

    shutil.copytree(source, copy)
    library = copy / _build.library_path().name
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 2])
    proc = run_python("""
        import torch, fastffnn
        from fastffnn import _build
        x = torch.randn(4, 3, dtype=torch.float64)
        w = torch.randn(5, 3, dtype=torch.float64)
        torch.testing.assert_close(fastffnn.linear_act(x, w), torch.tanh(x @ w.T))
        assert _build._is_current(_build.stamp())
        print("ok")
        """, {"TORCH_EXTENSIONS_DIR": str(tmp_path)}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "does not match its stamp; rebuilding it" in proc.stderr
    assert library.stat().st_size > len(data) // 2


def test_a_torch_upgrade_changes_the_build_and_its_stamp(monkeypatch):
    before = (_build.build_dir(), _build.stamp())
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".post1")
    after = (_build.build_dir(), _build.stamp())
    assert before[0] != after[0] and before[1] != after[1]


@pytest.mark.parametrize("backend", ["cpu", "cuda", "emulated"])
def test_no_two_sources_make_the_same_object_file(monkeypatch, backend):
    # cpp_extension names each object after its file's stem (x.cpp -> x.o, x.cu -> x.cuda.o), whatever
    # its folder, and ninja refuses a build where two files would make one object.
    monkeypatch.setenv("FASTFFNN_BACKEND", backend)
    objects = [p.stem + (".cuda.o" if p.suffix == ".cu" else ".o") for p in _build.sources()]
    assert len(objects) == len(set(objects)), sorted(objects)
