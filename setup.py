"""fastffnn installs as pure Python: the C++ extension is built on first use.

setup.py deliberately does not import torch, so pip never installs a second
torch into an isolated build environment just to build this package.
"""

from setuptools import find_packages, setup

setup(
    name="fastffnn",
    version="0.1.0",
    description="Fused CPU kernels for the lecture's feed-forward classifier, a drop-in for its FFNN",
    packages=find_packages(include=["fastffnn", "fastffnn.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "ninja", "pybind11"],
    # matplotlib draws the benchmark's speedup plot (python -m fastffnn bench --plot); the tests
    # check that the plot is written, so the test extra carries it too.
    extras_require={"test": ["pytest", "matplotlib"], "bench": ["matplotlib"]},
)
