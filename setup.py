"""fastffnn installs as pure Python; the C++ extension is built on first use (JIT), or at install time on request.

* ``pip install .`` copies the C++ sources (csrc/) into the installed package
  (``fastffnn/csrc``), so the JIT build works wherever the package lands.
  setup.py does not import torch in this mode, so pip never installs a
  second torch into an isolated build environment just to build it.
* ``FASTFFNN_BUILD_EXT=1 pip install --no-build-isolation .`` also compiles
  the CPU extension ahead of time with torch's BuildExtension (the same
  sources and flags as the JIT build), into ``fastffnn/_C*.so`` plus a
  ``_C_build.json`` saying which torch, backend and SIMD level it was built
  for. The loader uses it when all three match this process, and JIT-builds
  otherwise (for example on a GPU machine, whose build also has CUDA kernels).
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".cpp", ".h", ".cu", ".cuh"}
CLI_EXTRAS = ["scikit-learn>=1.6", "tqdm", "matplotlib"]
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "fastffnn" / "__init__.py").read_text(), re.M).group(1)


class BuildPyWithSources(build_py):
    """build_py that also copies csrc/ into the package, where the installed loader looks for it."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's csrc/
        target = Path(self.build_lib) / "fastffnn" / "csrc"
        # build/ outlives a build: a source file removed or renamed since the
        # last one would otherwise be shipped, and compiled, with the new ones
        shutil.rmtree(target, ignore_errors=True)
        for src in sorted((ROOT / "csrc").rglob("*")):
            if src.is_file() and src.suffix in SOURCE_SUFFIXES:
                dst = target / src.relative_to(ROOT / "csrc")
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dst))


cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
if os.environ.get("FASTFFNN_BUILD_EXT", "0") not in ("", "0"):
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    os.environ["FASTFFNN_BACKEND"] = "cpu"  # the ahead-of-time build is the CPU extension
    sys.path.insert(0, str(ROOT))
    from fastffnn import _build  # noqa: E402  (the JIT loader's own source list and flags)

    ext_modules = [CppExtension(
        "fastffnn._C", [str(p.relative_to(ROOT)) for p in _build.sources()],
        extra_compile_args=_build.cflags(), extra_link_args=_build.ldflags())]

    class BuildExtWithInfo(BuildExtension):
        """BuildExtension that records what the library was built against, for the loader to check."""

        def run(self):
            super().run()
            info = {"torch": torch.__version__, "backend": "cpu", "simd": _build.cpu_capability(),
                    "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
                    # informational (the loader does not match on it): an -O0 build says so here
                    "extra_cflags": os.environ.get("FASTFFNN_EXTRA_CFLAGS", "")}
            out = Path(self.build_lib) / "fastffnn" / "_C_build.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(info))

    cmdclass["build_ext"] = BuildExtWithInfo

setup(
    name="fastffnn",
    version=VERSION,
    description="Fused CPU and CUDA kernels for the lecture's feed-forward classifier, a drop-in for its FFNN",
    packages=find_packages(include=["fastffnn", "fastffnn.*"]),
    package_data={"fastffnn": ["py.typed"]},
    python_requires=">=3.9",
    # scikit-learn ships the digits dataset `python -m fastffnn train` learns by default (no download), tqdm
    # draws its progress bar and matplotlib its curves (and the benchmark's plot).
    # The kernel library needs torch, numpy and ninja (the JIT build); the
    # command line (train: the digits data, progress bars, plots; bench: plots)
    # adds the "cli" extra.
    install_requires=["torch>=2.4", "numpy", "ninja"],
    # hypothesis generates the property tests' random shapes, dtypes, values and strides
    # fastffnn.sklearn (the MLPClassifier estimator) needs scikit-learn: the "sklearn" extra
    extras_require={"cli": CLI_EXTRAS, "sklearn": ["scikit-learn>=1.6"],
                    "test": ["pytest", "hypothesis", "pandas", *CLI_EXTRAS]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
