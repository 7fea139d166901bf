"""What train_step and fastffnn.optim.Adam must do where a user departs from the plain loop (issue 15).

Each test compares with what stock PyTorch does for the same thing, the
documented equivalent of ``model.train_step(x, y, opt)`` being
``opt.zero_grad(); model.nll_loss(x, y).backward(); opt.step()`` with
``torch.optim.Adam``. Each failed before its fix: frozen parameters moved, a
reset optimizer state was ignored, a meta target returned an uninitialised
loss, the in-place updates left the version counters alone, an old
checkpoint's float ``step`` broke the step, and a strided parameter was
refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune
from torch.optim.optimizer import register_optimizer_step_post_hook

import fastffnn
from fastffnn import FastFFNN

F64 = torch.float64


def models(bias=True):
    torch.manual_seed(0)
    model = FastFFNN(12, 16, 3, bias=bias, dtype=F64)
    return model, copy.deepcopy(model)


def stock_step(model, opt, x, y):
    opt.zero_grad()
    loss = model.nll_loss(x, y)
    loss.backward()
    opt.step()
    return loss.detach()


def batches(n, lead=(5,)):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(*lead, 12, dtype=F64, generator=g), torch.randint(0, 3, lead, generator=g))
            for _ in range(n)]


def assert_same_params(a, b, tol=1e-12):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("frozen", ["V.weight", "V.bias", "W.weight", "W.bias", "V"])
@pytest.mark.parametrize("lead", [(), (5,)], ids=["one example", "batch"])
def test_train_step_leaves_frozen_parameters_alone(frozen, lead):
    model, twin = models()
    for m in (model, twin):
        target = m.V if frozen == "V" else m.get_parameter(frozen)
        target.requires_grad_(False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    for x, y in batches(4, lead):
        torch.testing.assert_close(model.train_step(x, y, opt), stock_step(twin, ref, x, y))
    assert_same_params(model, twin)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), name
            assert p not in opt.state or not opt.state[p], f"{name} got optimizer state"
    # unfrozen again, the one-call step takes over and still agrees
    for m in (model, twin):
        m.requires_grad_(True)
    for x, y in batches(3, lead):
        torch.testing.assert_close(model.train_step(x, y, opt), stock_step(twin, ref, x, y))
    assert_same_params(model, twin)


@pytest.mark.parametrize("reset", ["fresh tensors", "empty dict", "new exp_avg in place"])
def test_train_step_sees_a_reset_of_the_optimizer_state(reset):
    model, twin = models()
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    data = batches(6)
    for x, y in data[:3]:
        model.train_step(x, y, opt)
        stock_step(twin, ref, x, y)
    for o, m in ((opt, model), (ref, twin)):
        p = m.V.weight
        if reset == "fresh tensors":
            o.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        elif reset == "empty dict":
            o.state[p] = {}
        else:
            o.state[p]["exp_avg"] = torch.zeros_like(p)
    for x, y in data[3:]:
        model.train_step(x, y, opt)
        stock_step(twin, ref, x, y)
    assert_same_params(model, twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ref.state[q]:
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key], rtol=1e-12, atol=1e-12)


def test_train_step_refuses_a_meta_target_or_input_beside_real_parameters():
    model, _ = models()
    opt = fastffnn.optim.Adam(model.parameters())
    before = [p.clone() for p in model.parameters()]
    x, y = torch.randn(4, 12, dtype=F64), torch.randint(0, 3, (4,))
    for args in ((x, y.to("meta")), (x.to("meta"), y)):
        with pytest.raises(ValueError, match=r"fastffnn.ffnn_nll_adam_step_: .* on (meta|cpu) but .* on (cpu|meta)"):
            model.train_step(*args, opt)
        with pytest.raises(ValueError, match="on meta|is on cpu"):  # as nll_loss refuses it
            model.nll_loss(*args)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_the_updates_bump_the_version_counters(how):
    # A graph recorded before the update must refuse to backward through the
    # changed weights, as it does after torch.optim.Adam's in-place update.
    model, _ = models()
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    data = batches(2)

    def update(x, y):
        if how == "step":
            stock_step(model, opt, x, y)
        else:
            model.train_step(x, y, opt)

    stale = model.nll_loss(*data[0])  # saves the weights for its backward
    versions = [p._version for p in model.parameters()]
    update(*data[0])
    assert all(p._version > v for p, v in zip(model.parameters(), versions))
    state_versions = [opt.state[p][k]._version for p in model.parameters() for k in ("step", "exp_avg", "exp_avg_sq")]
    update(*data[1])
    assert all(opt.state[p][k]._version > v for (p, k), v in zip(
        [(p, k) for p in model.parameters() for k in ("step", "exp_avg", "exp_avg_sq")], state_versions))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_an_old_checkpoint_with_a_float_step_loads_and_steps(how):
    model, twin = models()
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    for x, y in batches(2):
        stock_step(twin, ref, x, y)
    model.load_state_dict(twin.state_dict())
    state = copy.deepcopy(ref.state_dict())
    for per_param in state["state"].values():
        per_param["step"] = float(per_param["step"])  # as torch < 1.12 saved it
    ours = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ours.load_state_dict(state)
    assert all(torch.is_tensor(s["step"]) and s["step"].dtype == torch.float32 for s in ours.state.values())
    x, y = batches(3)[2]
    if how == "step":
        stock_step(model, ours, x, y)
    else:
        model.train_step(x, y, ours)
    stock_step(twin, ref, x, y)
    assert all(float(s["step"]) == 3.0 for s in ours.state.values())
    assert_same_params(model, twin)


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_a_strided_parameter_is_stepped_as_stock_steps_it(how):
    model, twin = models()
    for m in (model, twin):
        with torch.no_grad():  # V.weight becomes a transposed view: same values, other strides
            m.V.weight = torch.nn.Parameter(m.V.weight.detach().t().contiguous().t())
        assert not m.V.weight.is_contiguous()
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01, amsgrad=True)
    for lead in ((), (5,)):
        for x, y in batches(3, lead):
            if how == "step":
                stock_step(model, opt, x, y)
            else:
                model.train_step(x, y, opt)
            stock_step(twin, ref, x, y)
    assert_same_params(model, twin)
    assert not model.V.weight.is_contiguous()


# ------------------------------------------- a model changed after it was built
def _stock_twin(model):
    """The lecture's composition over the same submodules' weights, as stock modules."""
    V, W = torch.nn.Linear(12, 16, dtype=F64), torch.nn.Linear(16, 3, dtype=F64)
    V.load_state_dict({"weight": model.V.weight.detach(), "bias": model.V.bias.detach()})
    W.load_state_dict({"weight": model.W.weight.detach(), "bias": model.W.bias.detach()})
    return V, W


@pytest.mark.parametrize("change", ["weight_norm", "spectral_norm", "parametrization", "prune", "gelu",
                                    "log_softmax", "hook on V", "hook on g", "pre-hook on W", "hook on softmax",
                                    "global hook"])
def test_a_changed_model_runs_its_submodules_with_a_warning(change):
    # A fused module cannot run submodule hooks or parametrizations inside its
    # kernels; it notices them and runs the submodules one by one instead,
    # with one warning, so that nothing a user added is silently ignored.
    model, _ = models()
    calls = []
    handle = None
    if change == "weight_norm":
        torch.nn.utils.parametrizations.weight_norm(model.V)
    elif change == "spectral_norm":
        torch.nn.utils.parametrizations.spectral_norm(model.W)
    elif change == "parametrization":
        class Double(torch.nn.Module):
            def forward(self, w):
                return 2 * w
        torch.nn.utils.parametrize.register_parametrization(model.V, "weight", Double())
    elif change == "prune":
        torch.nn.utils.prune.random_unstructured(model.V, "weight", amount=0.5)
    elif change == "gelu":
        model.g = torch.nn.GELU()
    elif change == "log_softmax":
        model.softmax = torch.nn.LogSoftmax(dim=-1)
    elif change == "hook on V":
        model.V.register_forward_hook(lambda m, i, o: o * 0.5)
    elif change == "hook on g":
        model.g.register_forward_hook(lambda m, i, o: calls.append(1))
    elif change == "pre-hook on W":
        model.W.register_forward_pre_hook(lambda m, i: (i[0] + 1,))
    elif change == "hook on softmax":
        model.softmax.register_forward_hook(lambda m, i, o: o.flip(-1))
    elif change == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m)))
    try:
        assert not model.fused()
        x, y = batches(1)[0]
        want_out = model.softmax(model.W(model.g(model.V(x))))
        calls.clear()
        with pytest.warns(UserWarning, match="unfused"):
            got = model(x)
        torch.testing.assert_close(got, want_out)
        if change in ("hook on g", "global hook"):
            assert calls, "the hook did not fire"
        logits = model.W(model.g(model.V(x)))
        torch.testing.assert_close(model.log_probs(x), torch.log_softmax(logits, -1))
        torch.testing.assert_close(model.nll_loss(x, y), torch.nn.functional.cross_entropy(logits, y))
        assert "activation=" in repr(model)
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("change", ["weight_norm", "hook on V"])
def test_train_step_of_a_changed_model_is_the_usual_step(change):
    model, twin = models()
    for m in (model, twin):
        if change == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m.V)
        else:
            m.V.register_forward_hook(lambda mod, i, o: o * 0.5)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    with pytest.warns(UserWarning, match="unfused"):
        for x, y in batches(3):
            torch.testing.assert_close(model.train_step(x, y, opt), stock_step(twin, ref, x, y))
    assert_same_params(model, twin)


def test_a_plain_model_is_fused_and_a_removed_hook_restores_it():
    model, _ = models()
    assert model.fused()
    handle = model.V.register_forward_hook(lambda m, i, o: o)
    assert not model.fused()
    handle.remove()
    assert model.fused()
    model.V = torch.nn.Linear(12, 16, dtype=F64)  # a new plain layer is fine
    assert model.fused()


def test_train_step_runs_the_step_hooks_and_satisfies_lr_schedulers():
    import warnings

    model, twin = models()
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.1)
    ref = torch.optim.Adam(twin.parameters(), lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    handle = register_optimizer_step_post_hook(lambda o, a, k: o is opt and calls.append("global post"))
    try:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=1, gamma=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" must not come
            for x, y in batches(3):
                model.train_step(x, y, opt)
                stock_step(twin, ref, x, y)
                sched.step()
                ref_sched.step()
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global post"] * 3
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.1 * 0.5**3
    assert_same_params(model, twin)


def test_train_step_sees_a_parameter_replaced_after_its_first_step():
    model, twin = models()
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    data = batches(4)
    for x, y in data[:2]:
        model.train_step(x, y, opt)
        stock_step(twin, ref, x, y)
    for m, o in ((model, opt), (twin, ref)):  # a new V.weight, in the model and in the optimizer alike
        new = torch.nn.Parameter(m.V.weight.detach() * 0.5)
        o.param_groups[0]["params"][0] = new
        m.V.weight = new
    for x, y in data[2:]:
        model.train_step(x, y, opt)
        stock_step(twin, ref, x, y)
    assert_same_params(model, twin)
    assert float(opt.state[model.V.weight]["step"]) == 2.0  # a fresh state for the new parameter
    # replaced in the model only: the optimizer no longer holds it, and train_step says so
    model.W.weight = torch.nn.Parameter(model.W.weight.detach().clone())
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        model.train_step(*data[0], opt)
