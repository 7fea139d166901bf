#include "checks.h"

#include <c10/util/Exception.h>


namespace fastffnn {

void check_floating(const char* op, bool reduced_precision, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  const bool reduced = dt == at::kHalf || dt == at::kBFloat16;
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || (reduced && reduced_precision), "fastffnn.", op,
                   ": ", name, " must be float32 or float64 (or float16/bfloat16 on CUDA), got ", dt,
                   " on ", t.device(), reduced ? " (convert it with .float())" : "");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastffnn.", op, ": ", name, " is on ", t.device(),
                    " but ", ref_name, " is on ", ref.device(), "; move them to one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastffnn.", op, ": ", name, " is ",
                   t.scalar_type(), " but ", ref_name, " is ", ref.scalar_type(),
                   "; use one dtype for all of them");
}

int64_t check_layer(const char* op, const char* in_name, const at::Tensor& ref, int64_t in,
                    const char* weight_name, const at::Tensor& weight, const char* bias_name,
                    const c10::optional<at::Tensor>& bias) {
  check_like(op, weight_name, weight, "input", ref);
  TORCH_CHECK_VALUE(weight.dim() == 2, "fastffnn.", op, ": ", weight_name,
                    " must be 2-D (out_features, in_features), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == in, "fastffnn.", op, ": ", in_name, " has ", in,
                    " features but ", weight_name, " of shape ", weight.sizes(), " expects ",
                    weight.size(1));
  const int64_t out = weight.size(0);
  if (bias.has_value()) {
    check_like(op, bias_name, *bias, "input", ref);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out, "fastffnn.", op, ": ", bias_name,
                      " must have shape [", out, "] to match ", weight_name, " of shape ",
                      weight.sizes(), ", got ", bias->sizes());
  }
  return out;
}

LinearShape check_linear(const char* op, bool reduced_precision, const char* input_name, const at::Tensor& input,
                         const char* weight_name, const at::Tensor& weight, const char* bias_name,
                         const c10::optional<at::Tensor>& bias) {
  check_floating(op, reduced_precision, input_name, input);
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastffnn.", op, ": ", input_name,
                    " must have at least 1 dimension (..., in_features), got a 0-d tensor");
  const int64_t in = input.size(-1);
  const int64_t out = check_layer(op, input_name, input, in, weight_name, weight, bias_name, bias);
  const auto lead = input.sizes().slice(0, input.dim() - 1);
  return LinearShape{c10::multiply_integers(lead.begin(), lead.end()), in, out};
}

NetworkShape check_network(const char* op, bool reduced_precision, const at::Tensor& input, const at::Tensor& V_weight,
                           const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                           const c10::optional<at::Tensor>& W_bias) {
  const auto s = check_linear(op, reduced_precision, "input", input, "V_weight", V_weight, "V_bias", V_bias);
  const int64_t out =
      check_layer(op, "the hidden layer", input, s.out, "W_weight", W_weight, "W_bias", W_bias);
  return NetworkShape{s.rows, s.in, s.out, out};
}

bool check_target(const char* op, at::IntArrayRef logits_shape, const at::Tensor& logits,
                  const at::Tensor& target) {
  TORCH_CHECK_VALUE(target.device() == logits.device(), "fastffnn.", op, ": target is on ",
                    target.device(), " but the logits are on ", logits.device());
  if (at::isIntegralType(target.scalar_type(), /*includeBool=*/false)) {
    const auto lead = logits_shape.slice(0, logits_shape.size() - 1);
    TORCH_CHECK_VALUE(target.sizes() == lead, "fastffnn.", op,
                      ": a class-index target must have shape ", lead, " (the logits' shape ",
                      logits_shape, " without the class dim), got ", target.sizes());
    return true;
  }
  TORCH_CHECK_TYPE(target.is_floating_point(), "fastffnn.", op,
                   ": target must hold class indices (an integer tensor) or probabilities (a "
                   "floating tensor), got ",
                   target.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == logits.scalar_type(), "fastffnn.", op,
                   ": a probability target must have the logits' dtype ", logits.scalar_type(),
                   ", got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == logits_shape, "fastffnn.", op,
                    ": a probability target must have the logits' shape ", logits_shape,
                    ", got ", target.sizes());
  return false;
}

void check_grad_loss(const char* op, const at::Tensor& grad_loss, const at::Tensor& ref,
                     at::IntArrayRef lead, Reduction reduction) {
  check_like(op, "grad_loss", grad_loss, "logits", ref);
  const at::IntArrayRef expected = reduction == Reduction::None ? lead : at::IntArrayRef{};
  TORCH_CHECK_VALUE(grad_loss.sizes() == expected, "fastffnn.", op, ": grad_loss has shape ",
                    grad_loss.sizes(), ", expected ", expected);
}

std::vector<int64_t> linear_output_sizes(const at::Tensor& input, int64_t out) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes.back() = out;
  return sizes;
}

void check_layer_output(const char* op, const at::Tensor& input, int64_t out, const char* name,
                        const at::Tensor& t) {
  check_like(op, name, t, "input", input);
  const auto expected = linear_output_sizes(input, out);
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(expected), "fastffnn.", op, ": ", name,
                    " has shape ", t.sizes(), ", expected ", at::IntArrayRef(expected));
}

void check_class_index(const char* op, int64_t value, int64_t classes) {
  TORCH_CHECK_INDEX(value >= 0 && value < classes, "fastffnn.", op, ": target holds class index ",
                    value, " but there are only ", classes, " classes (valid: 0..", classes - 1,
                    ")");
}

}  // namespace fastffnn
