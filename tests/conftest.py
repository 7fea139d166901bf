"""Fixtures for every test: the extension is built once, and each test gets its own seed."""

from __future__ import annotations

import zlib

import pytest
import torch

import fastffnn


@pytest.fixture(scope="session", autouse=True)
def _built_extension():
    # Build (or load) once, up front, so that a build failure reads as one
    # error and no single test's time includes the compile.
    fastffnn.ensure_loaded()


@pytest.fixture(autouse=True)
def _seed(request):
    # A seed per test, stable across runs (str hashes are salted per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
