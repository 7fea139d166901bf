"""scikit-learn's ``MLPClassifier`` on fastffnn's kernels: swap the import, keep the code.

::

    from fastffnn.sklearn import MLPClassifier      # was: from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="tanh", batch_size=1).fit(X, y)

The estimator takes scikit-learn's parameters, with its names and defaults,
and trains the same network with the same updates: scikit-learn's Glorot
initialisation drawn from the same ``random_state`` in the same order, its
shuffle, its L2 penalty ``alpha`` (on the weights, divided by each batch's
size), its Adam (``eps`` added before the bias correction) or SGD with
momentum, its early stopping and its stopping rule on ``tol`` and
``n_iter_no_change``. On the CPU and on CUDA each epoch is one native call
(``fastffnn.optim``'s fit ops); only under global module hooks do the steps
run in Python.

Where it differs from scikit-learn's (each is documented on the class):

* computation in float32 by default (``dtype=torch.float64`` to compute as
  scikit-learn does on float64 input); ``coefs_`` come in that dtype;
* a binary problem is a two-class softmax, not one logistic output: its last
  ``coefs_`` has two columns, ``n_outputs_`` is 2 and ``out_activation_`` is
  ``"softmax"``;
* the loss is the log-softmax cross-entropy, without scikit-learn's clipping
  of probabilities at its dtype's eps (that clip bounds the loss of an example
  at about 36 in float64);
* not supported, each with a clear error: ``solver="lbfgs"``,
  ``activation="identity"``, ``learning_rate`` other than ``"constant"`` with
  ``solver="sgd"``, multilabel targets, sparse input and ``sample_weight``.

scikit-learn is a dependency of this submodule only (``pip install
fastffnn[sklearn]``), not of the kernel library.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as e:  # scikit-learn is this submodule's own dependency, not the kernel library's
    raise ImportError("fastffnn.sklearn needs scikit-learn >= 1.6: pip install 'fastffnn[sklearn]' "
                      f"({e})") from e

from . import optim
from ._runtime import ensure_loaded
from .mlp import FastMLP

__all__ = ["MLPClassifier", "release_buffers"]

# scikit-learn's activation names, as FastMLP calls them
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _param_error(name: str, value, expected: str) -> ValueError:
    return ValueError(f"fastffnn.sklearn.MLPClassifier: {name}={value!r} is not supported; {expected}")



class _Buffers:
    """The memory of the converted copy of a large training X, kept from one fit to the next.

    A fit converts X once into a contiguous array of the parameters' dtype (float32 from scikit-learn's float64,
    by default). A new array is new memory, which the OS maps and zeroes page by page at its first touch; on the
    project's VM, which hands freed memory back to its host, a new 90 MB copy (75,000 x 300) cost up to 0.4 s of
    system time a fit, as much as the training (benchmarks/RESULTS.md). So a copy of MIN_BYTES to MAX_BYTES (a
    float64 X of 32 MB to 2 GB, converted to float32) is made into a kept buffer, which repeated fits (a
    benchmark, a grid search's folds) reuse: one buffer per dtype, the largest so far, held by this module while
    no fit uses it (each fit takes its own: concurrent fits never share one) until ``release_buffers()``.
    """

    MIN_BYTES = 16 << 20
    MAX_BYTES = 1 << 30

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[np.dtype, np.ndarray] = {}

    def take(self, X: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray | None]:
        """(X converted into a kept buffer, that buffer), or (X, None) where X needs no copy or is small."""
        dtype = np.dtype(dtype)
        if (X.dtype == dtype and X.flags.c_contiguous and X.flags.writeable) or \
                not self.MIN_BYTES <= X.size * dtype.itemsize <= self.MAX_BYTES:
            return X, None
        with self._lock:
            buffer = self._free.pop(dtype, None)
        if buffer is None or buffer.size < X.size:
            buffer = np.empty(X.size, dtype)
        array = buffer[:X.size].reshape(X.shape)
        np.copyto(array, X, casting="same_kind")
        return array, buffer

    def keep(self, buffer: np.ndarray | None) -> None:
        if buffer is None:
            return
        with self._lock:
            kept = self._free.get(buffer.dtype)
            if kept is None or kept.size < buffer.size:
                self._free[buffer.dtype] = buffer

    def release(self) -> None:
        with self._lock:
            self._free.clear()


_BUFFERS = _Buffers()


def release_buffers() -> None:
    """Frees the buffers kept for the converted copies of large training inputs (1 GB at most per dtype: a fit
    converts a float64 X of 32 MB to 2 GB into one and leaves it for the next fit; see the README)."""
    _BUFFERS.release()


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier: scikit-learn's ``MLPClassifier``, trained by fastffnn's kernels.

    The parameters are scikit-learn's (see its documentation), with two more:

    Args:
        hidden_layer_sizes: the hidden widths, an int or a sequence (empty: softmax regression).
        activation: ``"relu"``, ``"tanh"`` or ``"logistic"`` (``"identity"`` is not supported).
        solver: ``"adam"`` or ``"sgd"`` (``"lbfgs"`` is not supported).
        alpha: the L2 penalty: each step adds ``alpha / batch_rows * W`` to every weight's gradient
            (not the biases') and ``0.5 * alpha * sum(||W||^2) / batch_rows`` to its loss.
        batch_size: an int, or ``"auto"``: ``min(200, n_samples)``.
        learning_rate: ``"constant"`` for ``"sgd"`` (others are not supported); ignored by ``"adam"``.
        learning_rate_init, max_iter, shuffle, random_state, tol, verbose, warm_start, momentum,
        nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
        n_iter_no_change: as scikit-learn's.
        power_t, max_fun: accepted for compatibility; unused, as scikit-learn leaves them with these solvers.
        device: where to train and predict (default: the CPU).
        dtype: ``torch.float32`` (the default) or ``torch.float64`` (also as ``"float32"``, ``numpy.float64``...).

    Shapes:
        ``X`` ``(n_samples, n_features)``: numpy, lists or pandas, dense; ``y`` ``(n_samples,)`` labels of
        any kind scikit-learn takes (a column vector warns, as scikit-learn's does). ``predict_proba``
        returns ``(n_samples, n_classes)`` in ``classes_`` order, two columns for a binary problem.

    Fitted attributes, as scikit-learn names them: ``classes_``, ``coefs_`` (``(fan_in, fan_out)``
    numpy arrays), ``intercepts_``, ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``, ``n_iter_``, ``t_``, ``n_features_in_`` (and ``feature_names_in_``),
    ``n_layers_``, ``n_outputs_`` (the number of classes) and ``out_activation_`` (``"softmax"``).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, device=None, dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        """Validates every parameter (in fit, as scikit-learn does); returns (hidden sizes, torch dtype, device)."""
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if not hasattr(sizes, "__iter__") else list(sizes)
        for n in sizes:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
                raise ValueError(f"fastffnn.sklearn.MLPClassifier: hidden_layer_sizes must be positive ints, got "
                                 f"{self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise _param_error("activation", self.activation, "supported: 'relu', 'tanh', 'logistic'")
        if self.solver not in ("adam", "sgd"):
            raise _param_error("solver", self.solver, "supported: 'adam', 'sgd'")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise _param_error("learning_rate", self.learning_rate, "one of 'constant', 'invscaling', 'adaptive'")
        if self.solver == "sgd" and self.learning_rate != "constant":
            raise _param_error("learning_rate", self.learning_rate, "solver='sgd' supports 'constant' only")
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) \
                    or self.batch_size < 1:
                raise _param_error("batch_size", self.batch_size, "an int >= 1 or 'auto'")
        # scikit-learn's ranges; an infinite alpha, learning_rate_init or epsilon would only make NaN weights
        for name, lo, hi, lo_open, hi_open in (
                ("alpha", 0, math.inf, False, True), ("learning_rate_init", 0, math.inf, True, True),
                ("power_t", 0, math.inf, False, False), ("tol", 0, math.inf, False, False),
                ("momentum", 0, 1, False, False), ("validation_fraction", 0, 1, False, True),
                ("beta_1", 0, 1, False, True), ("beta_2", 0, 1, False, True), ("epsilon", 0, math.inf, True, True)):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value) and (
                lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
            if not ok:
                interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                raise _param_error(name, value, f"a real number in {interval}")
        for name in ("max_iter", "n_iter_no_change", "max_fun"):
            value = getattr(self, name)
            if name == "n_iter_no_change" and value == np.inf:
                continue  # scikit-learn's way of never stopping early
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise _param_error(name, value, "an int >= 1" + (" or numpy.inf" if name == "n_iter_no_change" else ""))
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise _param_error(name, getattr(self, name), "a bool")
        dtype = self.dtype
        if dtype is None:
            dtype = torch.float32
        elif not isinstance(dtype, torch.dtype):
            try:
                dtype = _DTYPES.get(np.dtype(dtype).name)
            except TypeError:
                dtype = None
        if dtype not in (torch.float32, torch.float64):
            raise _param_error("dtype", self.dtype, "torch.float32 (the default) or torch.float64")
        try:
            device = torch.device("cpu" if self.device is None else self.device)
        except (RuntimeError, TypeError) as e:
            raise _param_error("device", self.device, f"a torch device ({e})") from None
        return [int(n) for n in sizes], dtype, device

    # ------------------------------------------------------------ fitting
    def fit(self, X, y):
        """Trains on ``X`` ``(n_samples, n_features)`` and labels ``y`` ``(n_samples,)``; returns self.

        ``max_iter`` epochs at most, each stopping rule as scikit-learn's. With ``warm_start`` a fitted
        estimator continues from its weights, with a new optimizer, as scikit-learn's does.
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``, continuing the weights and the optimizer state; returns self.

        ``classes`` (every label there will be) is required on the first call, as scikit-learn requires it.
        """
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("fastffnn.sklearn.MLPClassifier.partial_fit: classes must be passed on the first "
                                 "call to partial_fit")
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"fastffnn.sklearn.MLPClassifier.partial_fit: classes={classes!r} is not the same as "
                             f"on the first call, {self.classes_!r}")
        return self._fit(X, y, incremental=True, classes=classes)

    def _fit(self, X, y, incremental, classes=None):
        hidden, dtype, device = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("fastffnn.sklearn.MLPClassifier: partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        X, y = validate_data(self, X, y, reset=first_pass, dtype=(np.float64, np.float32), multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim != 1:
            raise ValueError("fastffnn.sklearn.MLPClassifier: multilabel targets (a 2-D y) are not supported; y "
                             f"must be one label per sample, got shape {y.shape}")
        check_classification_targets(y)  # the labels of a classification: "Unknown label type" otherwise
        labels = np.unique(y)
        if first_pass:
            self.classes_ = unique_labels(classes) if incremental else labels
        if np.setdiff1d(labels, self.classes_).size:
            what = "the same classes as in the previous call to fit" if self.warm_start and not incremental \
                else f"only classes of classes_ ({self.classes_!r})"
            raise ValueError(f"fastffnn.sklearn.MLPClassifier: y has classes {np.setdiff1d(labels, self.classes_)!r}"
                             f" outside classes_; it must have {what}")
        if self.warm_start and not incremental and not first_pass and not np.array_equal(labels, self.classes_):
            raise ValueError("fastffnn.sklearn.MLPClassifier: warm_start can only be used where y has the same "
                             f"classes as in the previous call to fit: previously {self.classes_!r}, now {labels!r}")
        target = np.searchsorted(self.classes_, y)
        rng = check_random_state(self.random_state)
        sizes = [X.shape[1], *hidden, len(self.classes_)]
        if first_pass:
            self._initialize(sizes, rng, dtype, device)
        elif self._dims() != sizes or self._trained_as != (self.activation, dtype, device):
            raise ValueError("fastffnn.sklearn.MLPClassifier: the fitted network (layer sizes "
                             f"{self._dims()}, activation, dtype, device {self._trained_as}) is not the one the "
                             f"parameters and the data now give ({sizes}, {(self.activation, dtype, device)}); "
                             "refit without warm_start")
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        self._fit_stochastic(X, target, rng, incremental)
        params = list(self._model.parameters())
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise ValueError("fastffnn.sklearn.MLPClassifier: the solver produced non-finite parameter weights. The "
                             "input data may contain large values and need to be preprocessed.")
        self._export()
        return self

    def _dims(self) -> list:
        layers = self._layers()
        return [layers[0].in_features, *(m.out_features for m in layers)]

    def _layers(self) -> list:
        return [m for m in self._model if isinstance(m, torch.nn.Linear)]

    def _initialize(self, sizes, rng, dtype, device):
        """scikit-learn's initialisation, drawn in its order: each layer's (fan_in, fan_out) weights, then its
        biases, uniform in +-sqrt(6 / (fan_in + fan_out)) (2 instead of 6 for the logistic activation)."""
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation must not move the user's RNG
            self._model = FastMLP(sizes, activation=_ACTIVATIONS[self.activation], device=device, dtype=dtype)
        self._trained_as = (self.activation, dtype, device)
        factor = 2.0 if self.activation == "logistic" else 6.0
        with torch.no_grad():
            for layer, fan_in, fan_out in zip(self._layers(), sizes[:-1], sizes[1:]):
                bound = np.sqrt(factor / (fan_in + fan_out))
                coef = rng.uniform(-bound, bound, (fan_in, fan_out))
                intercept = rng.uniform(-bound, bound, fan_out)
                layer.weight.copy_(torch.from_numpy(coef.T.copy()))
                layer.bias.copy_(torch.from_numpy(intercept))
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(sizes)
        self.n_outputs_ = sizes[-1]
        self.out_activation_ = "softmax"
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf
        # what early stopping restores if no epoch ends (scikit-learn's copy of the initial weights)
        self._best = [p.detach().clone() for p in self._model.parameters()]

    def _new_optimizer(self):
        params = list(self._model.parameters())
        if self.solver == "adam":
            return optim.Adam(params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        # scikit-learn's velocity is -lr times torch's momentum buffer: the same steps at a constant lr
        return optim.SGD(params, lr=self.learning_rate_init, momentum=self.momentum,
                         nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)

    def _input(self, X) -> torch.Tensor:
        weight = self._layers()[0].weight
        # numpy's cast: about twice as fast as torch's .to(float32) from float64 on the CPU here
        array = np.ascontiguousarray(X, dtype=np.float32 if weight.dtype == torch.float32 else np.float64)
        if not array.flags.writeable:  # a read-only memmap: torch.from_numpy warns on one (nothing writes to it)
            array = array.copy()
        return torch.from_numpy(array).to(weight.device)

    def _training_input(self, X):
        """(X as a tensor of the parameters' dtype and device, the kept buffer it was converted into or None):
        the buffer goes back to _BUFFERS when the fit ends."""
        array, buffer = _BUFFERS.take(X, np.float32 if self._layers()[0].weight.dtype == torch.float32 else np.float64)
        return self._input(array), buffer  # (a converted array goes through _input as it is, without a copy)

    def _fit_stochastic(self, X, target, rng, incremental):
        if self.early_stopping:
            # scikit-learn stratifies the split of a single-output target only: a binary problem
            stratify = target if len(self.classes_) <= 2 else None
            X, X_val, target, target_val = train_test_split(X, target, random_state=rng,
                                                            test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("fastffnn.sklearn.MLPClassifier: the validation set is too small. Increase "
                                 "validation_fraction or the size of your dataset.")
            y_val = self.classes_[target_val]
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                              stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        Xt, buffer = self._training_input(X)
        try:
            yt = torch.as_tensor(target, dtype=torch.long).to(Xt.device)
            sizes = np.full(-(-n // batch_size), batch_size, dtype=np.float64)
            sizes[-1] = n - (len(sizes) - 1) * batch_size
            # the native epochs need the fused plan, which global module hooks turn off: then the Python steps
            fused = self._model._fused_args() if optim._native_step_serves(Xt) else None
            native = fused is not None
            if native:
                ensure_loaded()
                *params, activations = fused
            order = np.arange(n)
            try:
                self.n_iter_ = 0
                for _ in range(self.max_iter):
                    if self.shuffle:
                        # sklearn.utils.shuffle's draws (an in-place shuffle of arange(n)), applied to the last
                        # order as scikit-learn applies them, without its per-call parameter validation
                        perm = np.arange(n)
                        rng.shuffle(perm)
                        order = order[perm]
                    rows = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))
                    if native:
                        with torch.no_grad():
                            losses = self._optimizer._native_fit(Xt, yt, rows, batch_size, params, activations,
                                                                 alpha=float(self.alpha), sklearn=True)
                    else:
                        losses = self._python_epoch(Xt, yt, rows, batch_size)
                    self.n_iter_ += 1
                    self.loss_ = float(losses.double().cpu().numpy() @ sizes) / n
                    self.t_ += n
                    self.loss_curve_.append(self.loss_)
                    if self.verbose:
                        print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                    if self.early_stopping:
                        self._update_validation(X_val, y_val)
                    elif self.loss_curve_[-1] > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if not self.early_stopping and self.loss_curve_[-1] < self.best_loss_:
                        self.best_loss_ = self.loss_curve_[-1]
                    if self._no_improvement_count > self.n_iter_no_change:
                        # a constant learning rate (Adam's, and SGD's here) has nothing to lower: stop
                        if self.verbose:
                            what = "Validation score" if self.early_stopping else "Training loss"
                            print(f"{what} did not improve more than tol={self.tol:f} for "
                                  f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                        break
                    if incremental:
                        break
                    if self.n_iter_ == self.max_iter:
                        warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                                      "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.", stacklevel=3)
        finally:  # the buffer is free again for the next fit, also after an error
            _BUFFERS.keep(buffer)
        if self.early_stopping:
            with torch.no_grad():
                for p, best in zip(self._model.parameters(), self._best):
                    p.copy_(best)

    def _update_validation(self, X_val, y_val):
        score = float(np.mean(self._predict(X_val, validate=False) == y_val))
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best = [p.detach().clone() for p in self._model.parameters()]

    def _python_epoch(self, X, y, rows, batch_size):
        """The epoch's steps in Python, where global module hooks turn the native epochs off: autograd through
        fastffnn's fused loss, scikit-learn's penalty, and the optimizer's update. Returns each step's loss, without a
        sync."""
        model, opt = self._model, self._optimizer
        weights = [m.weight for m in self._layers()]
        group = opt.param_groups[0]
        eps = group.get("eps")
        losses = []
        for batch in rows.to(X.device).split(batch_size):
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = model.nll_loss(X[batch], y[batch])
                if self.alpha:
                    loss = loss + 0.5 * self.alpha * sum(w.square().sum() for w in weights) / len(batch)
                loss.backward()
            if self.solver == "adam":
                # scikit-learn's Adam is torch's with eps / sqrt(1 - beta2^t) in place of eps
                state = opt.state.get(weights[0], {})
                t = float(state["step"]) + 1 if "step" in state else 1.0
                group["eps"] = eps / math.sqrt(1 - self.beta_2 ** t)
            try:
                opt.step()
            finally:
                if eps is not None:
                    group["eps"] = eps
            losses.append(loss.detach())
        model.zero_grad(set_to_none=True)
        return torch.stack(losses)

    def _export(self):
        """coefs_ and intercepts_ in scikit-learn's layout: (fan_in, fan_out) numpy arrays."""
        layers = self._layers()
        self.coefs_ = [m.weight.detach().cpu().numpy().T.copy() for m in layers]
        self.intercepts_ = [m.bias.detach().cpu().numpy().copy() for m in layers]

    # ------------------------------------------------------------ prediction
    def _log_probs(self, X, validate: bool = True) -> torch.Tensor:
        if validate:
            check_is_fitted(self, "coefs_")
            X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        with torch.inference_mode():
            return self._model.log_probs(self._input(X))

    def _predict(self, X, validate: bool = True):
        best = self._log_probs(X, validate).argmax(-1).cpu().numpy()
        return self.classes_[best]

    def predict(self, X):
        """The most probable class of each row of ``X`` ``(n_samples, n_features)``: ``(n_samples,)`` labels."""
        return self._predict(X)

    def predict_proba(self, X):
        """The class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        return self._log_probs(X).exp().cpu().numpy()

    def predict_log_proba(self, X):
        """The log of ``predict_proba``, computed as a log-softmax (finite where a probability underflows)."""
        return self._log_probs(X).cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags.multi_label = False
        return tags

