// A training epoch's promise to the CUDA loss (epilogues.cu's nll_rows) that
// its class indices are in range.
#pragma once

namespace fastffnn::cuda {

// While one lives on a thread, the class indices that reach the loss (nll_rows) on that thread have been
// range-checked already, and the loss skips its own check: two numbers read back, the one wait for the device in a
// training step. The fit ops check every label once, before their first step (train_cuda.cpp).
class IndicesChecked {
 public:
  IndicesChecked();
  ~IndicesChecked();
  IndicesChecked(const IndicesChecked&) = delete;
  IndicesChecked& operator=(const IndicesChecked&) = delete;
  static bool active();

 private:
  bool previous_;
};

}  // namespace fastffnn::cuda
