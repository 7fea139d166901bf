"""The throughput benchmark: FastFFNN against stock PyTorch peers, on the CPU or a CUDA GPU.

Run it as ``python -m fastffnn bench`` (or ``python benchmarks/bench.py``);
``--help`` lists the options. The pieces, one job per module:

* :mod:`.peers`: the implementations timed (stock eager, cross-entropy,
  fused Adam, torch.compile, and FastFFNN's drop-in, fused-Adam and one-call
  steps), each checked against eager before it is timed;
* :mod:`.timing`: waiting for an idle machine, and timing interleaved blocks
  of calls (torch.utils.benchmark on the CPU, CUDA events on a GPU) into
  medians and IQRs;
* :mod:`.report`: the table, the CSV rows and the PNG plot;
* :mod:`.cli`: the options and the loop over shapes, batches and modes;
* :mod:`.sklearn_bench`: ``bench --sklearn``, fastffnn.sklearn.MLPClassifier
  against scikit-learn's, fit time, examples/s and test accuracy.
"""

from .cli import main

__all__ = ["main"]
