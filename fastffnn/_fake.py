"""Fake (meta) kernels of the fastffnn ops, for torch.compile and FakeTensor.

Each one produces outputs with the real kernel's shapes, dtypes and devices
without computing anything. Each forward op's fake first runs the op's own
argument checks, the C++ ones its kernels run (csrc/checks.cpp), through the op
``fastffnn::_check_<op>``; so a traced program fails with the same error as an
eager one, and tests/test_errors.py::test_eager_and_fake_give_the_same_error
holds them to that. (The fakes are Python rather than C++ Meta kernels because
a Meta kernel sees every FakeTensor as a meta tensor, so it could check neither
devices nor the CUDA-only float16/bfloat16; the check ops are
CompositeImplicitAutograd, so they see the FakeTensors themselves.)
"""

from __future__ import annotations

import torch
from torch import Tensor

_checks = torch.ops.fastffnn


def _loss_shape(lead: tuple, reduction: str) -> tuple:
    return lead if reduction == "none" else ()


def _grad_placeholders(like: Tensor, mask, shapes) -> list[Tensor]:
    return [like.new_empty(shape) if wanted else like.new_empty(0) for wanted, shape in zip(mask, shapes)]


def register() -> None:
    """Registers every fake kernel; called once the native library is loaded."""
    lib = "fastffnn::"

    @torch.library.register_fake(lib + "linear_act")
    def _(input, weight, bias=None, activation="tanh"):
        _checks._check_linear_act(input, weight, bias, activation)
        return input.new_empty((*input.shape[:-1], weight.shape[0]))

    @torch.library.register_fake(lib + "linear_softmax")
    def _(input, weight, bias=None, log=False):
        _checks._check_linear_softmax(input, weight, bias)
        return input.new_empty((*input.shape[:-1], weight.shape[0]))

    def _layer_backward(grad_output, input, weight, output, output_mask):
        return _grad_placeholders(input, output_mask, (input.shape, weight.shape, (weight.shape[0],)))

    torch.library.register_fake(lib + "linear_act_backward")(
        lambda grad_output, input, weight, output, activation, output_mask: _layer_backward(
            grad_output, input, weight, output, output_mask))
    torch.library.register_fake(lib + "linear_softmax_backward")(
        lambda grad_output, input, weight, output, log, output_mask: _layer_backward(
            grad_output, input, weight, output, output_mask))

    @torch.library.register_fake(lib + "softmax_nll")
    def _(logits, target, reduction="mean"):
        _checks._check_softmax_nll(logits, target, reduction)
        lead = tuple(logits.shape[:-1])
        # the log-sum-exp is kept in the compute type: float32 for float16/bfloat16
        lse_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
        return logits.new_empty(_loss_shape(lead, reduction)), logits.new_empty(lead, dtype=lse_dtype)

    @torch.library.register_fake(lib + "softmax_nll_backward")
    def _(grad_loss, logits, target, lse, reduction, output_mask):
        mask = (output_mask[0], output_mask[1] and target.is_floating_point())
        return _grad_placeholders(logits, mask, (logits.shape, logits.shape))

    @torch.library.register_fake(lib + "ffnn")
    def _(input, V_weight, V_bias, W_weight, W_bias, activation="tanh", log=False):
        _checks._check_ffnn(input, V_weight, V_bias, W_weight, W_bias, activation)
        hidden, out = V_weight.shape[0], W_weight.shape[0]
        lead = tuple(input.shape[:-1])
        return input.new_empty((*lead, out)), input.new_empty((*lead, hidden))

    @torch.library.register_fake(lib + "ffnn_backward")
    def _(grad_output, input, V_weight, W_weight, hidden, output, activation, log, output_mask):
        shapes = (input.shape, V_weight.shape, (V_weight.shape[0],), W_weight.shape, (W_weight.shape[0],))
        return _grad_placeholders(input, output_mask, shapes)

    @torch.library.register_fake(lib + "ffnn_nll")
    def _(input, V_weight, V_bias, W_weight, W_bias, target, activation="tanh", reduction="mean"):
        _checks._check_ffnn_nll(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction)
        hidden, out = V_weight.shape[0], W_weight.shape[0]
        lead = tuple(input.shape[:-1])
        return (input.new_empty(_loss_shape(lead, reduction)), input.new_empty((*lead, hidden)),
                input.new_empty((*lead, out)))

    @torch.library.register_fake(lib + "ffnn_nll_backward")
    def _(grad_loss, input, V_weight, W_weight, hidden, log_probs, target, activation, reduction, output_mask):
        shapes = (input.shape, V_weight.shape, (V_weight.shape[0],), W_weight.shape, (W_weight.shape[0],),
                  log_probs.shape)
        mask = list(output_mask)
        mask[5] = mask[5] and target.is_floating_point()
        return _grad_placeholders(input, mask, shapes)

    def _mlp_outputs(input, weights):
        lead = tuple(input.shape[:-1])
        return input.new_empty((*lead, weights[-1].shape[0])), [input.new_empty((*lead, w.shape[0]))
                                                                for w in weights[:-1]]

    @torch.library.register_fake(lib + "mlp")
    def _(input, weights, biases, activations, log=False):
        _checks._check_mlp(input, weights, biases, activations)
        return _mlp_outputs(input, weights)

    def _mlp_grads(input, weights, mask):
        depth = len(weights)
        gx = input.new_empty(input.shape) if mask[0] else input.new_empty(0)
        gw = [input.new_empty(w.shape) if mask[1 + k] else input.new_empty(0) for k, w in enumerate(weights)]
        gb = [input.new_empty((w.shape[0],)) if mask[1 + depth + k] else input.new_empty(0)
              for k, w in enumerate(weights)]
        return gx, gw, gb

    @torch.library.register_fake(lib + "mlp_backward")
    def _(grad_output, input, weights, hidden, output, activations, log, output_mask):
        return _mlp_grads(input, weights, output_mask)

    @torch.library.register_fake(lib + "mlp_nll")
    def _(input, weights, biases, target, activations, reduction="mean"):
        _checks._check_mlp_nll(input, weights, biases, target, activations, reduction)
        out, hidden = _mlp_outputs(input, weights)
        return input.new_empty(_loss_shape(tuple(input.shape[:-1]), reduction)), hidden, out

    @torch.library.register_fake(lib + "mlp_nll_backward")
    def _(grad_loss, input, weights, hidden, log_probs, target, activations, reduction, output_mask):
        gx, gw, gb = _mlp_grads(input, weights, output_mask)
        want_target = output_mask[-1] and target.is_floating_point()
        return gx, gw, gb, input.new_empty(log_probs.shape) if want_target else input.new_empty(0)

    def _adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
                   amsgrad, maximize, decoupled_weight_decay):
        return None

    for overload in ("", ".tensor_lr"):
        torch.library.register_fake(lib + "adam_step_" + overload)(_adam_step)

    def _train_step(check):
        def fake(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, activation,
                 reduction, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
            # A meta input or target beside real parameters lands here too: the
            # checks name the devices, where an uninitialised loss would be silent.
            check(input, target, params, has_bias, activation, reduction)
            return input.new_empty(())
        return fake

    for name, check in (("ffnn_nll_adam_step_", _checks._check_ffnn_nll_adam_step_),
                        ("mlp_nll_adam_step_", _checks._check_mlp_nll_adam_step_)):
        for overload in ("", ".tensor_lr"):
            torch.library.register_fake(lib + name + overload)(_train_step(check))

    @torch.library.register_fake(lib + "sgd_step_")
    def _(params, grads, momentum_buffers, fresh, lr, momentum, dampening, weight_decay, nesterov, maximize):
        return None

    @torch.library.register_fake(lib + "mlp_nll_sgd_step_")
    def _(input, target, params, has_bias, momentum_buffers, fresh, activations, reduction, lr, momentum, dampening,
          weight_decay, nesterov, maximize):
        _checks._check_mlp_nll_sgd_step_(input, target, params, has_bias, activations, reduction)
        return input.new_empty(())

    def _fit_losses(op, input, target, order, batch_size, params, has_bias, activations, alpha, maximize,
                    decoupled_decay):
        _checks._check_mlp_nll_fit_(op, input, target, order, batch_size, params, has_bias, activations, alpha,
                                    maximize, decoupled_decay)
        steps = (order.shape[0] + batch_size - 1) // batch_size
        return input.new_empty((steps,))

    @torch.library.register_fake(lib + "mlp_nll_adam_fit_")
    def _(input, target, order, batch_size, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
          activations, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, alpha=0.0,
          eps_before_correction=False):
        return _fit_losses("mlp_nll_adam_fit_", input, target, order, batch_size, params, has_bias, activations,
                           alpha, maximize, decoupled_weight_decay and weight_decay != 0)

    @torch.library.register_fake(lib + "mlp_nll_sgd_fit_")
    def _(input, target, order, batch_size, params, has_bias, momentum_buffers, fresh, activations, lr, momentum,
          dampening, weight_decay, nesterov, maximize, alpha=0.0):
        return _fit_losses("mlp_nll_sgd_fit_", input, target, order, batch_size, params, has_bias, activations,
                           alpha, maximize, False)
