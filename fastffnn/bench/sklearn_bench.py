"""``python -m fastffnn bench --sklearn``: fastffnn.sklearn.MLPClassifier against scikit-learn's MLPClassifier.

Both estimators get the same parameters and the same training split, and train
for exactly the same number of epochs (``max_iter=epochs``, with
``n_iter_no_change=epochs`` so that neither stops early). Each cell reports the
fit's wall time (median over ``--repeats`` fits, the two estimators
interleaved), training examples per second and test accuracy, side by side,
and each fit's speedup over scikit-learn's on the same data in the same run:
the ratio of the medians (``x sklearn``) and of the fastest fits (``x best``).
On a shared machine whose load comes and goes, the outside load only adds
time to a fit, so the fastest of several interleaved fits is the steadier
estimate of each estimator's own speed; the two can differ by a third.

scikit-learn computes in the dtype of its input: it is timed on the data as
given (float64) and, with ``--sklearn-float32``, also on a float32 copy.
fastffnn computes in float32 (its default). Both are held to ``--threads``
threads: scikit-learn's BLAS through threadpoolctl, torch through
``torch.set_num_threads``. Each fit starts after ``--settle`` seconds of
quiet: the BLAS threads of the fit before go on spinning for a while after it
returns, and without the pause each estimator ran 1.5-3x slower beside the
other's spinning threads than alone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from .. import __version__
from . import report

DATASETS = {
    # name: (hidden_layer_sizes, default epochs)
    "digits": ((64,), 10),
    "classification": ((100,), 2),
}
USAGE = """
examples:
  python -m fastffnn bench --sklearn --threads 2 --csv sk.csv --plot sk.png
  python -m fastffnn bench --sklearn --datasets digits --batches 1,32,200,auto --repeats 3
  python -m fastffnn bench --sklearn --smoke            # a few seconds: checks that it runs
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastffnn bench --sklearn", description=__doc__, epilog=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sklearn", action="store_true", help="this mode")
    p.add_argument("--datasets", default="digits,classification",
                   help="digits (1797 x 64, 10 classes) and/or classification (make_classification: 100,000 x "
                        "300, 10 classes)")
    p.add_argument("--batches", default="1,32,200,auto", help="batch sizes; 'auto' is min(200, n)")
    p.add_argument("--epochs", default=None,
                   help="epochs per fit, one number or dataset=epochs pairs (default digits=10,classification=2)")
    p.add_argument("--repeats", type=int, default=None, help="fits per estimator and cell (default 3; 1 for "
                   "classification at batch 1)")
    p.add_argument("--threads", type=int, default=None, help=f"CPU threads (default {torch.get_num_threads()})")
    p.add_argument("--sklearn-float32", action="store_true", help="also time scikit-learn on float32 input")
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds of quiet before each fit, for the last fit's spinning threads to stop (0.5)")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--solver", default="adam")
    p.add_argument("--csv", default=None)
    p.add_argument("--append", action="store_true")
    p.add_argument("--plot", default=None, help="PNG: examples/s and test accuracy against batch size")
    p.add_argument("--smoke", action="store_true", help="a small classification set, one epoch, one repeat (unless --repeats says)")
    return p.parse_args(argv)


def load(name: str, smoke: bool):
    """(X_train, X_test, y_train, y_test) as float64, split 75/25 (seeded)."""
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    else:
        n = 2000 if smoke else 100_000
        X, y = make_classification(n_samples=n, n_features=300, n_informative=60, n_classes=10, random_state=0)
    return train_test_split(X, y, test_size=0.25, random_state=0)


def _epochs(text, name):
    if text is None:
        return DATASETS[name][1]
    if "=" not in text:
        return int(text)
    pairs = dict(item.split("=") for item in text.split(","))
    return int(pairs.get(name, DATASETS[name][1]))


def time_fit(make, X, y, Xte, yte, settle):
    est = make()
    time.sleep(settle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - start
    return seconds, float(est.score(Xte, yte)), est.n_iter_


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from sklearn import __version__ as sk_version
        from sklearn.neural_network import MLPClassifier as SkMLP
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("fastffnn bench --sklearn needs scikit-learn: pip install 'fastffnn[cli]'", file=sys.stderr)
        return 2
    from ..sklearn import MLPClassifier

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    datasets = [d for d in args.datasets.split(",") if d]
    if args.smoke:
        datasets, args.epochs, args.repeats, args.settle = ["classification"], "1", args.repeats or 1, 0.0
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        print(f"fastffnn bench --sklearn: unknown datasets {sorted(unknown)}; known: {list(DATASETS)}",
              file=sys.stderr)
        return 2
    try:
        batches = [b if b == "auto" else int(b) for b in args.batches.split(",") if b]
        epochs_of = {name: _epochs(args.epochs, name) for name in datasets}
    except ValueError:
        print(f"fastffnn bench --sklearn: could not read --batches {args.batches!r} or --epochs {args.epochs!r}",
              file=sys.stderr)
        return 2
    if not batches or any(b != "auto" and b < 1 for b in batches) or min(epochs_of.values(), default=1) < 1 \
            or (args.repeats is not None and args.repeats < 1):
        print("fastffnn bench --sklearn: --batches must be ints >= 1 or 'auto', --epochs and --repeats >= 1",
              file=sys.stderr)
        return 2
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {"device": "cpu", "device_name": cpu, "threads": threads, "torch": torch.__version__,
            "sklearn": sk_version, "fastffnn": __version__, "python": platform.python_version(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"fastffnn {__version__} against scikit-learn {sk_version} on {cpu}, {threads} threads, "
          f"{meta['timestamp']}")
    print("fit: median wall seconds over the repeats; 'x sklearn' = scikit-learn's median fit time (float64 input) "
          "/ this; 'x best' = the same for the fastest fits")
    rows = []
    with threadpool_limits(threads):
        for name in datasets:
            Xtr, Xte, ytr, yte = load(name, args.smoke)
            hidden, _ = DATASETS[name]
            epochs = epochs_of[name]
            print(f"\n{name}: {Xtr.shape[0]} x {Xtr.shape[1]} train, {Xte.shape[0]} test, "
                  f"{len(np.unique(ytr))} classes; hidden {hidden}, {args.activation}, {args.solver}, "
                  f"{epochs} epochs")
            print(f"  {'batch':>6}  {'implementation':<22}{'fit s':>9}{'examples/s':>13}{'x sklearn':>11}{'x best':>8}"
                  f"{'test acc':>10}")
            impls = {"scikit-learn float64": (SkMLP, Xtr, Xte, {})}
            if args.sklearn_float32:
                impls["scikit-learn float32"] = (SkMLP, Xtr.astype(np.float32), Xte.astype(np.float32), {})
            impls["fastffnn float32"] = (MLPClassifier, Xtr, Xte, {})
            for cls in (SkMLP, MLPClassifier):  # untimed: the first fit loads the extension and warms up
                time_fit(lambda: cls(hidden_layer_sizes=hidden, max_iter=1, batch_size=32), Xtr[:256], ytr[:256],
                         Xte[:64], yte[:64], 0.0)
            for batch in batches:
                # scikit-learn's one-example epochs of the large set take minutes: those cells are fitted once
                repeats = args.repeats or (1 if name == "classification" and batch == 1 else 3)
                params = dict(hidden_layer_sizes=hidden, activation=args.activation, solver=args.solver,
                              batch_size=batch, max_iter=epochs, n_iter_no_change=epochs, random_state=0)
                times = {k: [] for k in impls}
                acc = {}
                for _ in range(repeats):
                    for key, (cls, X, Xt, extra) in impls.items():
                        seconds, accuracy, n_iter = time_fit(lambda: cls(**params, **extra), X, ytr, Xt, yte,
                                                             args.settle)
                        assert n_iter == epochs, (key, n_iter)
                        times[key].append(seconds)
                        acc[key] = accuracy
                base = statistics.median(times["scikit-learn float64"])
                base_best = min(times["scikit-learn float64"])
                for key in impls:
                    fit_s = statistics.median(times[key])
                    row = dict(meta)
                    row.update({"dataset": name, "n_train": Xtr.shape[0], "n_features": Xtr.shape[1],
                                "hidden": "x".join(map(str, hidden)), "activation": args.activation,
                                "solver": args.solver, "batch": batch, "epochs": epochs, "impl": key,
                                "repeats": repeats, "fit_s": round(fit_s, 4),
                                "fit_s_min": round(min(times[key]), 4), "fit_s_max": round(max(times[key]), 4),
                                "examples_per_s": round(epochs * Xtr.shape[0] / fit_s, 1),
                                "x_sklearn": round(base / fit_s, 3),
                                "x_sklearn_best": round(base_best / min(times[key]), 3),
                                "test_accuracy": round(acc[key], 4)})
                    rows.append(row)
                    print(f"  {batch!s:>6}  {key:<22}{fit_s:>9.3f}{row['examples_per_s']:>13.0f}"
                          f"{row['x_sklearn']:>11.2f}{row['x_sklearn_best']:>8.2f}{acc[key]:>10.4f}", flush=True)
                if args.csv:
                    report.write_csv(args.csv, rows[-len(impls):], append=args.append or len(rows) > len(impls))
    if args.plot and rows:
        if plot(args.plot, rows, f"fastffnn {__version__} vs scikit-learn {sk_version}, {cpu}, {threads} threads"):
            print(f"\nplot: {args.plot}")
        else:
            print("\nplot skipped: matplotlib is not installed")
    if args.csv and rows:
        print(f"csv: {args.csv}")
    return 0


COLORS = {"scikit-learn float64": "tab:blue", "scikit-learn float32": "tab:orange", "fastffnn float32": "tab:green"}


def plot(path: str, rows: list[dict], title: str) -> bool:
    """Per dataset: examples/s (log scale) and test accuracy against batch size, one line per implementation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False)
    for j, name in enumerate(datasets):
        mine = [r for r in rows if r["dataset"] == name]
        labels = list(dict.fromkeys(str(r["batch"]) for r in mine))
        for impl in dict.fromkeys(r["impl"] for r in mine):
            pts = [r for r in mine if r["impl"] == impl]
            xs = [labels.index(str(r["batch"])) for r in pts]
            style = dict(marker="o", label=impl, color=COLORS.get(impl))  # one colour per estimator in every panel
            axes[0][j].plot(xs, [float(r["examples_per_s"]) for r in pts], **style)
            axes[1][j].plot(xs, [100 * float(r["test_accuracy"]) for r in pts], **style)
        for ax, what in ((axes[0][j], "training examples/s"), (axes[1][j], "test accuracy, %")):
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlabel("batch_size")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"{name} ({mine[0]['n_train']} x {mine[0]['n_features']}, {mine[0]['epochs']} epochs)")
        axes[0][j].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
