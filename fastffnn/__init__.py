"""fastffnn: fused CPU and CUDA kernels for the lecture's feed-forward classifier.

``import fastffnn`` is cheap: the native extension is built (once, then
cached) and loaded on the first op call. See README.md.
"""

from . import optim
from ._build import BuildError
from ._runtime import ensure_loaded
from .mlp import FastMLP
from .module import FastFFNN
from .ops import ffnn, ffnn_nll, linear_act, linear_softmax, mlp, mlp_nll, softmax_nll
from .tier import cuda_tier, set_cuda_tier

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "FastFFNN",
    "FastMLP",
    "cuda_tier",
    "ensure_loaded",
    "ffnn",
    "ffnn_nll",
    "linear_act",
    "linear_softmax",
    "mlp",
    "mlp_nll",
    "optim",
    "set_cuda_tier",
    "softmax_nll",
    "__version__",
]
