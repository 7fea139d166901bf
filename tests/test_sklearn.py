"""fastffnn.sklearn.MLPClassifier: scikit-learn's estimator checks, agreement with scikit-learn's MLPClassifier and
with a stock-PyTorch loop of the same updates in float64, real use (Pipeline, GridSearchCV in processes, pickle,
clone), labels and inputs of every kind, and the error table."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import shuffle as sk_shuffle  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastffnn  # noqa: E402
from fastffnn.optim import _EMULATED  # noqa: E402
from fastffnn.sklearn import MLPClassifier  # noqa: E402

# The emulated build sends CPU tensors down the CUDA route (tests/test_cuda.py runs the estimator there)
pytestmark = pytest.mark.skipif(_EMULATED, reason="the CPU build's estimator; test_cuda.py covers the CUDA route")


def digits(n=300, seed=0):
    X, y = load_digits(return_X_y=True)
    X, y = sk_shuffle(X / 16.0, y, random_state=seed, n_samples=n)
    return X, y


def fitted_pair(X, y, **params):
    """scikit-learn's estimator and ours in float64, fitted with the same parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = SkMLP(**params).fit(X, y)
        ours = MLPClassifier(**params, dtype=torch.float64).fit(X, y)
    return theirs, ours


def assert_same_model(theirs, ours, atol=1e-10):
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10, atol=0)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        assert a.shape == b.shape and a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


# -------------------------------------------------------------- against scikit-learn itself
@pytest.mark.parametrize("params", [
    dict(),                                                                     # adam, relu, batch 'auto'
    dict(activation="tanh", hidden_layer_sizes=(64,), batch_size=1, max_iter=2),  # the one-row loops
    dict(activation="tanh", hidden_layer_sizes=(32, 16), batch_size=7, alpha=1.0, max_iter=4),  # last batch of 6
    dict(activation="logistic", batch_size=50, alpha=0.1, early_stopping=True, max_iter=25, n_iter_no_change=3),
    dict(solver="sgd", learning_rate_init=0.1, batch_size=32, max_iter=6),          # nesterov
    dict(solver="sgd", learning_rate_init=0.05, momentum=0.5, nesterovs_momentum=False, batch_size=1, max_iter=2),
    dict(solver="sgd", momentum=0.0, learning_rate_init=0.2, batch_size=16, shuffle=False, max_iter=3),
    dict(hidden_layer_sizes=(), batch_size=10, max_iter=5, beta_1=0.5, beta_2=0.9, epsilon=1e-3),  # no hidden layer
    dict(tol=0.05, n_iter_no_change=2, max_iter=50, learning_rate_init=0.01),  # stops on the loss, before max_iter
])
def test_the_same_model_as_scikit_learn_in_float64(params):
    """Initialisation, shuffle, batches, penalty, optimizer, early stopping, stopping rule: all scikit-learn's."""
    X, y = digits()
    theirs, ours = fitted_pair(X, y, random_state=3, max_iter=params.pop("max_iter", 8), **params)
    assert_same_model(theirs, ours)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_validation_score_ == theirs.best_validation_score_ and ours.best_loss_ is None
    else:
        assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=1e-10)
        assert ours.validation_scores_ is None
    if params.get("tol"):
        assert ours.n_iter_ < 50
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=0, atol=1e-10)


def test_partial_fit_and_warm_start_continue_as_scikit_learn_does():
    X, y = digits(200)
    params = dict(hidden_layer_sizes=(20,), random_state=1, batch_size=16)
    theirs, ours = SkMLP(**params), MLPClassifier(**params, dtype=torch.float64)
    for lo, hi in ((0, 80), (80, 200), (0, 200)):
        theirs.partial_fit(X[lo:hi], y[lo:hi], classes=np.arange(10))
        ours.partial_fit(X[lo:hi], y[lo:hi], classes=np.arange(10))
    assert_same_model(theirs, ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (theirs, ours):
            est.set_params(warm_start=True, max_iter=3)
            est.fit(X, y)
    assert_same_model(theirs, ours)


def test_float32_by_default_and_accuracy_like_scikit_learn():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = X[:1400] / 16.0, X[1400:] / 16.0, y[:1400], y[1400:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = SkMLP(hidden_layer_sizes=(64,), activation="tanh", random_state=0, max_iter=30).fit(Xtr, ytr)
        ours = MLPClassifier(hidden_layer_sizes=(64,), activation="tanh", random_state=0, max_iter=30).fit(Xtr, ytr)
    assert ours.coefs_[0].dtype == np.float32 and ours.predict_proba(Xte).dtype == np.float32
    assert abs(ours.score(Xte, yte) - theirs.score(Xte, yte)) <= 0.01
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)


# -------------------------------------------------------------- against a stock-PyTorch loop
def stock_torch_fit(X, y, params, epochs):
    """The updates, written out in stock PyTorch (float64): scikit-learn's initialisation and shuffle, the
    cross-entropy plus alpha/2 * sum ||W||^2 / rows through autograd, and scikit-learn's Adam by hand or
    torch.optim.SGD with momentum."""
    rng = np.random.RandomState(params["random_state"])
    sizes = [X.shape[1], *params["hidden_layer_sizes"], int(y.max()) + 1]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        w = torch.tensor(rng.uniform(-bound, bound, (fan_in, fan_out)).T.copy(), requires_grad=True)
        b = torch.tensor(rng.uniform(-bound, bound, fan_out), requires_grad=True)
        layers.append((w, b))
    params_list = [t for layer in layers for t in layer]
    if params["solver"] == "sgd":
        sgd = torch.optim.SGD(params_list, lr=params["learning_rate_init"], momentum=params["momentum"],
                              nesterov=True)
    m = [torch.zeros_like(p) for p in params_list]
    v = [torch.zeros_like(p) for p in params_list]
    Xt, yt, alpha, bs = torch.tensor(X), torch.tensor(y), params["alpha"], params["batch_size"]
    order, t = np.arange(len(X)), 0
    for _ in range(epochs):
        order = sk_shuffle(order, random_state=rng)
        for start in range(0, len(X), bs):
            rows = torch.from_numpy(order[start:start + bs])
            h = Xt[rows]
            for k, (w, b) in enumerate(layers):
                h = h @ w.T + b
                if k + 1 < len(layers):
                    h = torch.tanh(h)
            loss = F.cross_entropy(h, yt[rows]) + 0.5 * alpha * sum((w * w).sum() for w, _ in layers) / len(rows)
            grads = torch.autograd.grad(loss, params_list)
            with torch.no_grad():
                if params["solver"] == "sgd":
                    for p, g in zip(params_list, grads):
                        p.grad = g
                    sgd.step()
                    continue
                t += 1
                b1, b2, eps = 0.9, 0.999, 1e-8
                lr_t = params["learning_rate_init"] * np.sqrt(1 - b2**t) / (1 - b1**t)
                for p, g, mi, vi in zip(params_list, grads, m, v):
                    mi.mul_(b1).add_(g, alpha=1 - b1)
                    vi.mul_(b2).add_(g * g, alpha=1 - b2)
                    p.sub_(lr_t * mi / (vi.sqrt() + eps))
    return [w.detach().numpy().T for w, _ in layers], [b.detach().numpy() for _, b in layers]


@pytest.mark.parametrize("solver,batch_size", [("adam", 1), ("adam", 13), ("sgd", 1), ("sgd", 13)])
def test_the_same_updates_as_a_stock_pytorch_loop_in_float64(solver, batch_size):
    X, y = digits(120, seed=4)
    params = dict(hidden_layer_sizes=(12, 9), solver=solver, alpha=0.3, batch_size=batch_size, random_state=5,
                  learning_rate_init=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**params, activation="tanh", max_iter=3, dtype=torch.float64).fit(X, y)
    coefs, intercepts = stock_torch_fit(X, y, params, epochs=3)
    for a, b in zip(ours.coefs_ + ours.intercepts_, coefs + intercepts, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


# -------------------------------------------------------------- labels and inputs
def test_labels_of_any_kind_come_back_as_given():
    """Labels are encoded by their sorted order: any labels train the model their codes train."""
    X, y = digits(150)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    for labels in (names[y], y * 7 - 20):
        classes = np.unique(labels)
        est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, batch_size=16, max_iter=5,
                            learning_rate_init=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = clone(est).fit(X, labels)
            codes = clone(est).fit(X, np.searchsorted(classes, labels))
        np.testing.assert_array_equal(clf.classes_, classes)
        pred = clf.predict(X)
        assert pred.dtype == labels.dtype
        np.testing.assert_array_equal(pred, classes[codes.predict(X)])
        assert clf.score(X, labels) == codes.score(X, np.searchsorted(classes, labels)) > 0.5


def test_a_binary_problem_is_a_two_class_softmax():
    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    labels = np.where(y == 1, "yes", "no")
    clf = MLPClassifier(hidden_layer_sizes=(8,), random_state=0, batch_size=20, learning_rate_init=0.01,
                        max_iter=50).fit(X, labels)
    assert clf.n_outputs_ == 2 and clf.out_activation_ == "softmax" and clf.coefs_[-1].shape == (8, 2)
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-4, atol=1e-6)
    assert clf.score(X, labels) > 0.85


def test_inputs_as_lists_pandas_and_integers():
    X, y = digits(100)
    ref = MLPClassifier(hidden_layer_sizes=(10,), random_state=0, max_iter=5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = clone(ref).fit(X, y).predict_proba(X)
        np.testing.assert_allclose(clone(ref).fit(X.tolist(), y.tolist()).predict_proba(X.tolist()), expected)
        Xi = (X * 16).astype(np.int64)
        ints = clone(ref).fit(Xi, y).predict_proba(Xi)
        np.testing.assert_allclose(ints, clone(ref).fit(Xi.astype(np.float64), y).predict_proba(Xi), rtol=1e-12)
        pd = pytest.importorskip("pandas")
        frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
        clf = clone(ref).fit(frame, pd.Series(y))
    np.testing.assert_allclose(clf.predict_proba(frame), expected)
    assert list(clf.feature_names_in_) == list(frame.columns) and clf.n_features_in_ == 64


def test_sparse_input_is_refused_with_a_clear_error():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = digits(50)
    with pytest.raises(TypeError, match="[Ss]parse"):
        MLPClassifier(max_iter=2).fit(scipy_sparse.csr_matrix(X), y)


# -------------------------------------------------------------- real use
def test_pipeline_grid_search_in_processes_pickle_and_clone():
    X, y = digits(240)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), random_state=0, max_iter=30,
                                                         learning_rate_init=0.01))
    space = {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__batch_size": [16, "auto"]}
    grid, serial = GridSearchCV(pipe, space, cv=2, n_jobs=2), GridSearchCV(pipe, space, cv=2, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)  # in two worker processes, each of which loads the extension
        serial.fit(X, y)
    scores = grid.cv_results_["mean_test_score"]
    np.testing.assert_array_equal(scores, serial.cv_results_["mean_test_score"])
    assert len(scores) == 4 and grid.best_score_ > 0.85
    best = grid.best_estimator_
    again = pickle.loads(pickle.dumps(best))
    np.testing.assert_array_equal(again.predict_proba(X), best.predict_proba(X))
    twin = clone(best)
    assert twin.get_params()["mlpclassifier__alpha"] == best.get_params()["mlpclassifier__alpha"]
    assert not hasattr(twin[-1], "coefs_")


def test_verbose_and_the_convergence_warning(capsys):
    X, y = digits(60)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\)"):
        MLPClassifier(hidden_layer_sizes=(5,), max_iter=2, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


# -------------------------------------------------------------- errors
X_SMALL, Y_SMALL = digits(40)


@pytest.mark.parametrize("params,match", [
    (dict(solver="lbfgs"), "solver='lbfgs' is not supported; supported: 'adam', 'sgd'"),
    (dict(activation="identity"), "activation='identity' is not supported; supported: 'relu', 'tanh', 'logistic'"),
    (dict(solver="sgd", learning_rate="adaptive"), "learning_rate='adaptive' is not supported; solver='sgd'"),
    (dict(learning_rate="fast"), "learning_rate='fast' is not supported"),
    (dict(batch_size=0), "batch_size=0 is not supported; an int >= 1 or 'auto'"),
    (dict(batch_size="big"), "batch_size='big'"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes must be positive ints"),
    (dict(alpha=-1.0), "alpha=-1.0 is not supported; a real number in \\[0, inf\\)"),
    (dict(beta_2=1.0), "beta_2=1.0"),
    (dict(momentum=1.5), "momentum=1.5"),
    (dict(validation_fraction=1.0), "validation_fraction=1.0"),
    (dict(learning_rate_init=0.0), "learning_rate_init=0.0"),
    (dict(max_iter=0), "max_iter=0 is not supported; an int >= 1"),
    (dict(n_iter_no_change=0), "n_iter_no_change=0"),
    (dict(dtype=torch.float16), "dtype=torch.float16 is not supported; torch.float32 \\(the default\\) or"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(device="nowhere"), "device='nowhere' is not supported"),
    (dict(shuffle="yes"), "shuffle='yes' is not supported; a bool"),
])
def test_bad_parameters_fail_in_fit_naming_the_parameter(params, match):
    clf = MLPClassifier(**params)  # as scikit-learn's: __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(X_SMALL, Y_SMALL)
    assert not hasattr(clf, "coefs_")


def test_bad_data_and_misuse():
    X, y = X_SMALL, Y_SMALL
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    with pytest.raises(ValueError, match="multilabel targets"):
        MLPClassifier().fit(X, np.eye(10)[y][:, :3].astype(int))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, len(y)))
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 64 features"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="outside classes_"):
        clf.partial_fit(X, y + 100)
    with pytest.raises(ValueError, match="same classes as in the previous call"):
        clf.set_params(warm_start=True).fit(X[y < 5], y[y < 5])
    with pytest.raises(TypeError):
        clf.fit(X, y, sample_weight=np.ones(len(y)))
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(early_stopping=True, validation_fraction=0.01).fit(X, y)


def test_the_fit_ops_check_alpha():
    from fastffnn.mlp import FastMLP
    from fastffnn.optim import Adam
    model = FastMLP([4, 3, 2], dtype=torch.float64)
    opt = Adam(model.parameters())
    *params, acts = model._fused_args()
    X, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -1"):
        opt._native_fit(X, y, torch.arange(5), 2, params, acts, alpha=-1.0)
    opt.param_groups[0]["maximize"] = True
    with pytest.raises(ValueError, match="cannot be combined with maximize=True"):
        opt._native_fit(X, y, torch.arange(5), 2, params, acts, alpha=0.1)
    opt.param_groups[0].update(maximize=False, weight_decay=0.01, decoupled_weight_decay=True)
    with pytest.raises(ValueError, match="cannot be combined with decoupled weight decay"):
        opt._native_fit(X, y, torch.arange(5), 2, params, acts, alpha=0.1)


def test_opcheck_of_the_fit_ops_with_the_penalty():
    from fastffnn.mlp import FastMLP
    model = FastMLP([5, 4, 3], dtype=torch.float64)
    *params, acts = model._fused_args()
    params = [p.detach().clone() for p in params]
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    bufs = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
    order = torch.randperm(9)
    for bs in (1, 4):
        torch.library.opcheck(torch.ops.fastffnn.mlp_nll_adam_fit_.default,
                              (X, y, order, bs, params, True, bufs(), bufs(), [], [torch.tensor(0.0) for _ in params],
                               acts,
                               0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False, 0.5, True))
        torch.library.opcheck(torch.ops.fastffnn.mlp_nll_sgd_fit_.default,
                              (X, y, order, bs, params, True, bufs(), [True] * 4, acts, 0.1, 0.9, 0.0, 0.0, True,
                               False, 0.5))


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_penalty_is_the_same_on_strided_parameters(solver, batch_size):
    # Contiguous parameters take the one-pass update, with the penalty as coupled weight decay; a transposed
    # weight sends every step to the batch path and optimizer.apply, with the penalty added to the gradient.
    # Both are the same arithmetic: dropping the penalty from either route, or scaling it differently, fails.
    fit = torch.ops.fastffnn.mlp_nll_adam_fit_ if solver == "adam" else torch.ops.fastffnn.mlp_nll_sgd_fit_
    torch.manual_seed(3)
    base = [torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
            torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    X, y, order = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,)), torch.randperm(10)

    def run(strided):
        params = [p.clone() for p in base]
        if strided:
            params[0] = base[0].t().contiguous().t()  # same values, column-major
            assert not params[0].is_contiguous()
        zeros = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
        if solver == "adam":
            losses = fit(X, y, order, batch_size, params, True, zeros(), zeros(), [],
                         [torch.tensor(0.0, dtype=torch.float64) for _ in params], ["tanh"],
                         0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False, 0.3, True)
        else:
            losses = fit(X, y, order, batch_size, params, True, zeros(), [True] * 4, ["tanh"],
                         0.1, 0.9, 0.0, 0.0, True, False, 0.3)
        return params, losses

    (dense, dense_losses), (strided, strided_losses) = run(False), run(True)
    torch.testing.assert_close(strided_losses, dense_losses, rtol=1e-12, atol=1e-12)
    for got, want in zip(strided, dense):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # and the penalty did something: without it the weights differ
    params = [p.clone() for p in base]
    zeros = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
    if solver == "adam":
        fit(X, y, order, batch_size, params, True, zeros(), zeros(), [],
            [torch.tensor(0.0, dtype=torch.float64) for _ in params], ["tanh"],
            0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False, 0.0, True)
    else:
        fit(X, y, order, batch_size, params, True, zeros(), [True] * 4, ["tanh"], 0.1, 0.9, 0.0, 0.0, True, False, 0.0)
    assert not torch.allclose(params[0], dense[0], rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------- scikit-learn's own checks
# Each check scikit-learn runs on a classifier, on small data; the ones expected to fail, with the reason:
EXPECTED_FAILED_CHECKS: dict = {}


@parametrize_with_checks([MLPClassifier(hidden_layer_sizes=(10,), max_iter=200)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_without_scikit_learn_the_import_says_what_to_install(monkeypatch):
    import importlib
    import sys
    monkeypatch.delitem(sys.modules, "fastffnn.sklearn")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    message = r"fastffnn.sklearn needs scikit-learn >= 1.6: pip install 'fastffnn\[sklearn\]'"
    with pytest.raises(ImportError, match=message):
        importlib.import_module("fastffnn.sklearn")


def test_scikit_learns_ranges_and_torchs_random_state_left_alone():
    X, y = digits(60)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, n_iter_no_change=np.inf, tol=np.inf,
                            validation_fraction=0.0).fit(X, y)
    assert clf.n_iter_ == 3  # never stops early with n_iter_no_change=inf
    assert torch.equal(torch.get_rng_state(), state)


def test_warm_start_refuses_a_network_the_parameters_no_longer_describe():
    X, y = digits(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=1, warm_start=True).fit(X, y)
        for change in (dict(activation="tanh"), dict(dtype=torch.float64), dict(hidden_layer_sizes=(6,))):
            with pytest.raises(ValueError, match="refit without warm_start"):
                pickle.loads(pickle.dumps(clf)).set_params(**change).fit(X, y)  # a fitted copy


def test_global_module_hooks_take_the_python_steps_with_the_same_result():
    X, y = digits(80)
    params = dict(hidden_layer_sizes=(7,), batch_size=9, max_iter=2, random_state=0, dtype=torch.float64)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        native = MLPClassifier(**params).fit(X, y)
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: calls.append(1))
        try:
            hooked = MLPClassifier(**params).fit(X, y)
        finally:
            handle.remove()
    assert calls  # the hook saw the Python steps' forwards
    for a, b in zip(hooked.coefs_ + hooked.intercepts_, native.coefs_ + native.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_a_large_training_copy_goes_into_a_kept_buffer_that_later_fits_reuse(monkeypatch):
    """The converted copy of a large X (float32 from float64) is made into a buffer kept from one fit to the next
    (fresh memory cost up to 0.25 s of system time a fit on the project's VM): a second fit takes the first's
    buffer, a smaller X a view of it, and every fit trains as one whose copy is fresh memory, bit for bit (no
    value of an earlier X stays in use)."""
    from fastffnn import sklearn as fsk

    pool = fsk._Buffers()
    monkeypatch.setattr(fsk, "_BUFFERS", pool)
    X, y = digits(300)
    X2, y2 = digits(200, seed=1)

    def fit(X, y):
        return MLPClassifier(hidden_layer_sizes=(16,), batch_size=20, max_iter=2, random_state=0).fit(X, y)

    monkeypatch.setattr(pool, "MIN_BYTES", 1 << 40)  # no buffer: every copy fresh
    fresh = [fit(X, y), fit(X2, y2)]
    assert pool._free == {}
    monkeypatch.setattr(pool, "MIN_BYTES", 1024)
    kept = fit(X, y)
    buffer = pool._free[np.dtype(np.float32)]
    assert buffer.size == X.size
    second = fit(X2, y2)  # a smaller X: the same buffer, its first X2.size elements
    assert pool._free[np.dtype(np.float32)] is buffer
    for a, b in ((fresh[0], kept), (fresh[1], second)):
        for c, d in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
            assert np.array_equal(c, d)
    # concurrent fits take a buffer each; the larger one is kept
    first, taken = pool.take(X, np.float32)
    other, other_taken = pool.take(X, np.float32)
    assert taken is buffer and other_taken is not buffer and np.array_equal(first, other)
    assert np.array_equal(first, X.astype(np.float32))
    pool.keep(other_taken)
    pool.keep(taken)
    assert pool._free[np.dtype(np.float32)] is other_taken  # (as large: the first kept stays)
    # no copy needed, small or over the cap: no buffer
    assert pool.take(X.astype(np.float32), np.float32)[1] is None
    assert pool.take(X[:2], np.float32)[1] is None
    monkeypatch.setattr(pool, "MAX_BYTES", X.size * 4 - 1)
    assert pool.take(X, np.float32)[1] is None
    monkeypatch.setattr(pool, "MAX_BYTES", 1 << 30)
    fsk.release_buffers()
    assert pool._free == {}


@pytest.mark.parametrize("case", ["early stopping", "Fortran order", "float64 parameters from float32 X"])
def test_fits_through_the_kept_buffer_train_as_fits_with_fresh_copies(monkeypatch, case):
    from fastffnn import sklearn as fsk

    pool = fsk._Buffers()
    monkeypatch.setattr(fsk, "_BUFFERS", pool)
    X, y = digits(300)
    params = dict(hidden_layer_sizes=(16,), batch_size=20, max_iter=3, random_state=0)
    if case == "early stopping":
        params.update(early_stopping=True, validation_fraction=0.2, n_iter_no_change=1)
    elif case == "Fortran order":
        X = np.asfortranarray(X)
    else:
        X, params["dtype"] = X.astype(np.float32), torch.float64

    def fit():
        return MLPClassifier(**params).fit(X, y)

    monkeypatch.setattr(pool, "MIN_BYTES", 1 << 40)
    fresh = fit()
    monkeypatch.setattr(pool, "MIN_BYTES", 1024)
    for _ in range(2):  # the first makes the buffer, the second reuses it
        kept = fit()
        for c, d in zip(fresh.coefs_ + fresh.intercepts_, kept.coefs_ + kept.intercepts_, strict=True):
            assert np.array_equal(c, d)
    assert list(pool._free) == [np.dtype(np.float64 if "float64" in case else np.float32)]


def test_a_failed_fit_gives_its_buffer_back(monkeypatch):
    from fastffnn import sklearn as fsk

    pool = fsk._Buffers()
    monkeypatch.setattr(fsk, "_BUFFERS", pool)
    monkeypatch.setattr(pool, "MIN_BYTES", 1024)
    X, y = digits(300)

    def fail(*args, **kwargs):
        raise RuntimeError("an epoch failed")

    for where in ("ensure_loaded", "epoch"):  # before the epochs (loading the extension), and in one
        with monkeypatch.context() as m:
            if where == "ensure_loaded":
                m.setattr(fsk, "ensure_loaded", fail)
            else:
                m.setattr(MLPClassifier, "_python_epoch", fail)
                m.setattr(fastffnn.optim.Adam, "_native_fit", fail)
            with pytest.raises(RuntimeError, match="an epoch failed"):
                MLPClassifier(hidden_layer_sizes=(16,), batch_size=20, max_iter=2).fit(X, y)
        assert pool._free[np.dtype(np.float32)].size == X.size, where
        pool.release()
