"""``python -m fastffnn train``: train the lecture's classifier with FastFFNN on real data.

* :mod:`.data`: the dataset (scikit-learn's bundled digits by default, or a
  user's ``.npz``/``.csv``), checked, split into train and dev;
* :mod:`.loop`: the training loops, FastFFNN's and the stock FFNN's (for
  ``--compare``), with a progress bar and per-epoch dev accuracy;
* :mod:`.outputs`: the checkpoint, the PNG of the curves and the summary;
* :mod:`.cli`: the options.
"""

from .cli import main

__all__ = ["main"]
