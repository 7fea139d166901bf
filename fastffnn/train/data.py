"""The training data: features and integer labels, checked, then split into train and dev sets.

The lecture's ``form_input`` turns a numpy feature vector into a float
tensor; :func:`to_tensors` does that for a whole dataset. Every problem with
a user's file is raised as :class:`DataError` with one line saying what is
wrong and where, never a traceback.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """A dataset that cannot be trained on; the message says why, in one line."""


@dataclass
class Dataset:
    name: str
    features: np.ndarray  # (examples, features), float
    labels: np.ndarray  # (examples,), int64 in [0, classes)
    classes: int


def digits() -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images (64 features, 0-16), 10 classes."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the default dataset needs scikit-learn (pip install scikit-learn), or pass --data FILE") \
            from None
    d = load_digits()
    return _checked("sklearn digits", d.data, d.target)


def load(path: str, label_column: int = -1) -> Dataset:
    """A user's dataset: ``.npz`` (arrays X and y, or features and labels) or ``.csv`` (label in one column)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        return _load_npz(path)
    if ext == ".csv":
        return _load_csv(path, label_column)
    raise DataError(f"{path}: unknown format {ext or '(no extension)'}; use .npz (X, y) or .csv")


def _load_npz(path: str) -> Dataset:
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a broken archive
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    for fx, fy in (("X", "y"), ("features", "labels"), ("x", "y")):
        if fx in arrays and fy in arrays:
            return _checked(path, arrays[fx], arrays[fy])
    raise DataError(f"{path}: expected arrays 'X' and 'y' (or 'features' and 'labels'), found {sorted(arrays.files)}")


def _load_csv(path: str, label_column: int) -> Dataset:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    if not _numeric(rows[0]):
        rows = rows[1:]  # a header line
    if not rows:
        raise DataError(f"{path}: only a header, no examples")
    width = len(rows[0])
    if width < 2:
        raise DataError(f"{path}: each row needs at least one feature and a label, line 1 has {width} column")
    if not -width <= label_column < width:
        raise DataError(f"{path}: --label-column {label_column} is out of range: the rows have {width} columns "
                        f"(0..{width - 1}, or -1 for the last)")
    features, labels = [], []
    for n, row in enumerate(rows, 1):
        if len(row) != width:
            raise DataError(f"{path}: ragged rows: row {n} has {len(row)} columns, the first has {width}")
        try:
            values = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not _is_number(c))
            raise DataError(f"{path}: row {n}: {bad.strip()!r} is not a number") from None
        label = values.pop(label_column)
        features.append(values)
        labels.append(label)
    return _checked(path, np.asarray(features), np.asarray(labels))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numeric(row: list[str]) -> bool:
    return all(_is_number(c) for c in row)


# Far above any classifier this trains; a label past it is an id or a typo, not a class index (the output
# layer would need one row per class up to it).
MAX_CLASSES = 1_000_000


def _checked(name: str, features, labels) -> Dataset:
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2:
        raise DataError(f"{name}: features must be a 2-D array (examples, features), got shape {features.shape}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise DataError(f"{name}: labels must be 1-D with one per example: {features.shape[0]} examples, "
                        f"labels of shape {labels.shape}")
    if features.shape[0] < 2 or features.shape[1] < 1:
        raise DataError(f"{name}: need at least 2 examples and 1 feature, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number):
        raise DataError(f"{name}: features must be numeric, got dtype {features.dtype}")
    features = features.astype(np.float64)
    if not np.isfinite(features).all():
        raise DataError(f"{name}: features contain NaN or infinity")
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.mod(labels, 1) == 0):
        raise DataError(f"{name}: labels must be integers (class indices 0..classes-1)")
    if labels.min() < 0:
        raise DataError(f"{name}: labels must be class indices >= 0, found {labels.min():g}")
    if labels.max() >= MAX_CLASSES:
        raise DataError(f"{name}: label {labels.max():g} would make {labels.max() + 1:g} classes; labels must be "
                        f"class indices 0..classes-1 (at most {MAX_CLASSES} classes)")
    labels = labels.astype(np.int64)
    classes = int(labels.max()) + 1
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"{name}: all examples have label {present[0]}; a classifier needs at least 2 classes")
    return Dataset(name, features, labels, classes)


def split(data: Dataset, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and dev examples: a seeded shuffle, dev_fraction of it held out."""
    if not 0 < dev_fraction < 1:
        raise DataError(f"--dev-fraction must be between 0 and 1, got {dev_fraction}")
    order = np.random.default_rng(seed).permutation(len(data.labels))
    n_dev = max(1, int(round(dev_fraction * len(order))))
    if n_dev >= len(order):
        raise DataError(f"{data.name}: {len(order)} examples leave nothing to train on with --dev-fraction "
                        f"{dev_fraction}")
    return order[n_dev:], order[:n_dev]


def to_tensors(data: Dataset, idx: np.ndarray, device: torch.device, dtype: torch.dtype):
    """The lecture's form_input for a set of examples: (features (n, f), labels (n,)) tensors."""
    x = torch.from_numpy(data.features[idx]).to(device=device, dtype=dtype)
    y = torch.from_numpy(data.labels[idx]).to(device)
    return x, y
