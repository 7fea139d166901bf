"""The native library, ready to call: built and loaded (fastffnn/_build.py), its fakes registered.

Every op wrapper calls :func:`ensure_loaded` first, so after the first call
it costs one global read.
"""

from __future__ import annotations

import threading

import torch

from . import _build

_ready = False
_lock = threading.Lock()


# Under torch.compile, Dynamo runs this for real while tracing and records no
# graph for it (its result, None, is a constant), so a first op call inside a
# compiled function builds and loads the library instead of breaking the graph.
@torch.compiler.assume_constant_result
def ensure_loaded() -> None:
    """Build (if needed) and load the extension, then register its fake kernels. Idempotent."""
    global _ready
    if _ready:
        return
    with _lock:
        if _ready:
            return
        _build.load()
        from . import _fake

        _fake.register()
        _ready = True
