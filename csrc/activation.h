// The hidden-layer activations fastffnn fuses into its linear layers, and the
// reductions its losses support. Shared by the CPU and CUDA kernels and the
// autograd layer, so that every backend accepts exactly the same spellings.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <type_traits>

namespace fastffnn {

enum class Activation { Tanh, ReLU, Sigmoid };

inline Activation parse_activation(c10::string_view name) {
  if (name == "tanh") return Activation::Tanh;
  if (name == "relu") return Activation::ReLU;
  if (name == "sigmoid") return Activation::Sigmoid;
  TORCH_CHECK_VALUE(false, "fastffnn: activation must be one of 'tanh', 'relu', 'sigmoid', got '",
                    std::string(name), "'");
}

// Calls f(tag) where decltype(tag)::value is the runtime activation `act` as
// a compile-time constant, so that kernels are compiled once per activation
// with no branch inside their loops.
template <Activation A>
using ActTag = std::integral_constant<Activation, A>;

template <typename F>
decltype(auto) dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::ReLU:
      return f(ActTag<Activation::ReLU>{});
    case Activation::Sigmoid:
      return f(ActTag<Activation::Sigmoid>{});
    case Activation::Tanh:
      break;
  }
  return f(ActTag<Activation::Tanh>{});
}

enum class Reduction { None, Mean, Sum };

inline Reduction parse_reduction(c10::string_view name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  if (name == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "fastffnn: reduction must be one of 'mean', 'sum', 'none', got '",
                    std::string(name), "'");
}

}  // namespace fastffnn
