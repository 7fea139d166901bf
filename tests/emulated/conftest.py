"""Tests of the CUDA emulator itself and of what only it can simulate (other GPUs' limits, graph capture).

Collected only under FASTFFNN_BACKEND=emulated (tests/test_cuda_emulated.py runs them that way).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # cuda_harness, helpers

if os.environ.get("FASTFFNN_BACKEND", "").lower() != "emulated":
    collect_ignore_glob = ["test_*.py"]
