// The fully fused CUDA tier, for narrow networks of 2 to 16 layers (every
// hidden width <= 256, classes <= 64, float32/float16/bfloat16): the whole
// forward in one kernel, and the backward's row-local work (every layer's
// pre-activation gradient and the bias gradients) in one kernel, a tile of
// rows per block, with the activations or gradients between the layers in
// shared memory, in the spirit of tiny-cuda-nn's fully fused MLP (but with
// biases, softmax and any width up to the bounds). The hidden layers'
// products run on the tensor cores (mma.sync: TF32 for float32 when allowed,
// bf16/fp16 for those dtypes) or as exact float32 FMAs; the output layer, at
// most 256 x 64 per row, in FMAs.
//
// Forward, per block of kRows rows, for each hidden layer:
//   1. acc = a @ V^T, streaming the layer's input a (x from global memory for
//      the first layer, the previous layer's activations from shared memory
//      after it) and V through shared memory kK columns at a time; each
//      thread accumulates a 4 x 8 register tile.
//   2. a = act(acc + V_bias), kept in shared memory (and written out for the
//      backward), in the place of the layer's input.
//   then 3. z = a @ W^T + W_bias with W^T staged in shared memory, one warp
//   per 4 rows, each lane two classes; softmax or log_softmax per row with
//   warp reductions, written out.
// Backward, per block of kRows rows: the output layer's dz = dL/dz from the
//   softmax output and its gradient (or from the NLL loss), kept in shared
//   memory; then for each hidden layer, from the top down to the lowest one
//   anything is asked of, dz_k = (dz_{k+1} @ W_{k+1}) * act'(h_k), streaming
//   W_{k+1} through shared memory, dz_k replacing dz_{k+1} on chip. Every dz
//   is written out for the weight and input gradients (cuBLAS), and the
//   block's column sums of each (the bias gradients) are reduced in a fixed
//   order.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ATen/ops/empty.h>

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fused_tier.h"
#include "common.cuh"

namespace fastffnn::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRows = 32;        // rows per block
constexpr int kK = 32;           // input columns per shared-memory stage
constexpr int kMaxHidden = 256;  // = 32 lanes x 8 columns per thread
constexpr int kMaxOut = 64;      // = 32 lanes x 2 classes per lane
constexpr int kRowsPerThread = 4;
constexpr int kColsPerThread = 8;

// How the hidden layers' products are computed: exact float32 FMAs, or the
// tensor cores (mma.sync, sm_80+) with TF32 operands for float32 (when
// torch.backends.cuda.matmul.allow_tf32 allows) and bfloat16/float16 operands
// for those dtypes, always accumulating in float32.
enum class Mma { None, TF32, BF16, FP16 };

// The smallest s >= n with s % 32 == residue.
__host__ __device__ constexpr int pad_to(int n, int residue) { return n + ((residue - n) % 32 + 32) % 32; }

// The forward kernel's shared memory, in floats, for a network whose widest
// hidden layer is `hidden`: the input stage [kRows][x_stride], the
// activations h [kRows][hidden + 1], and a region that holds first each
// layer's V stage (V^T of kK input columns, [kK][v_stride], v_stride padded
// for that layer's width, at most the one here) and then W^T
// [hidden][w_stride]. The strides are padded so that the accesses each mode
// makes fall in distinct banks (32 banks of 4 bytes; g = lane / 4 and
// t = lane % 4 in the mma fragments):
// * x stage: a warp stores one row (any stride is conflict-free); the TF32 A
//   fragments read rows g, columns t: banks 4g + t with x_stride = 4 (mod 32).
//   The 16-bit fragments' column pairs (2t, 2t + 1) stay 2-way.
// * V stage: TF32 B fragments read rows t, columns g: banks 8t + g with
//   v_stride = 8 (mod 32); 16-bit ones read rows 2t and 2t + 1: banks 8t + g
//   with v_stride = 4 (mod 32); the exact mode reads along rows (any stride).
//   A warp stores kVRun consecutive k of 32 / kVRun rows of V (banks
//   k * v_stride + c: distinct with these strides), each row's run one piece
//   of global memory.
// * W^T: a warp stores consecutive k of a class, banks k * w_stride: distinct
//   with an odd w_stride.
template <Mma M>
struct ForwardSmem {
  static constexpr int kVRun = M == Mma::TF32 ? 4 : 8;
  int x_stride, v_stride, w_stride;
  int64_t x_stage, h, region;
  __host__ __device__ ForwardSmem(int hidden, int classes)
      : x_stride(kK + 4),
        v_stride(pad_to(hidden, M == Mma::TF32 ? 8 : 4)),
        w_stride(classes | 1),
        x_stage(static_cast<int64_t>(kRows) * x_stride),
        h(static_cast<int64_t>(kRows) * (hidden + 1)),
        region(static_cast<int64_t>(kK) * v_stride > static_cast<int64_t>(hidden) * w_stride
                   ? static_cast<int64_t>(kK) * v_stride
                   : static_cast<int64_t>(hidden) * w_stride) {}
  __host__ __device__ int64_t floats() const { return x_stage + h + region; }
};

// Each thread accumulates 32 values of the block's (kRows x hidden) tile of
// h; Tile<M> says which (row, column) value i is and computes one stage of kK
// input columns. xs is [kRows][xs_stride], vs is V's stage as [kK][vs_stride].
template <Mma M>
struct Tile;

template <>
struct Tile<Mma::None> {
  // warp w owns rows 4w..4w+3; lane owns columns lane + 32j
  __device__ static int row(int i, int warp, int) { return warp * kRowsPerThread + i / kColsPerThread; }
  __device__ static int col(int i, int, int lane) { return lane + 32 * (i % kColsPerThread); }
  __device__ static void stage(float (&acc)[32], const float* xs, int xs_stride, const float* vs, int vs_stride,
                               int hidden, int warp, int lane) {
#pragma unroll 4
    for (int k = 0; k < kK; ++k) {
      float v[kColsPerThread];
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) {
        const int c = lane + 32 * j;
        v[j] = c < hidden ? vs[k * vs_stride + c] : 0.f;
      }
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        const float xv = xs[(warp * kRowsPerThread + i) * xs_stride + k];
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) acc[i * kColsPerThread + j] = fmaf(xv, v[j], acc[i * kColsPerThread + j]);
      }
    }
  }
};

__device__ __forceinline__ uint32_t tf32_bits(float x) {
#ifdef FASTFFNN_CUDA_EMULATION
  return emu::cvt_rna_tf32(x);
#elif __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  // cvt.rna.tf32 is sm_80's, like the mma that uses it; below, mma traps and the host never picks this path
  return __float_as_uint(x);
#endif
}

// Two values as the 16-bit pair an mma operand register holds, the first in
// the low half. The staged values came from bfloat16/float16 inputs, so the
// conversion back is exact.
template <Mma M>
__device__ __forceinline__ uint32_t pack16(float lo, float hi) {
  uint32_t r;
  if constexpr (M == Mma::BF16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, sizeof(r));
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, sizeof(r));
  }
  return r;
}

// One m16n8 tile product c += a * b on the tensor cores: k = 8 (TF32) or 16.
template <Mma M>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(FASTFFNN_CUDA_EMULATION)
  if constexpr (M == Mma::TF32) {
    emu::mma_m16n8k8_tf32(c, a, b, __FILE__, __LINE__);
  } else if constexpr (M == Mma::BF16) {
    emu::mma_m16n8k16_bf16(c, a, b, __FILE__, __LINE__);
  } else {
    emu::mma_m16n8k16_f16(c, a, b, __FILE__, __LINE__);
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (M == Mma::TF32) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (M == Mma::BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // the host never picks a tensor-core path for code below sm_80 (tensor_core_mode)
#endif
}

// The tensor-core tile: warp w owns the n8 column tiles w, w+8, w+16, w+24 of
// both m16 row tiles. With g = lane / 4 and t = lane % 4, the PTX fragment
// layouts are: accumulator q of a tile at (row g + 8 [q >= 2], column
// 2t + (q & 1)); A registers at rows g, g+8, g, g+8 and columns t, t, t+4,
// t+4 (TF32) or column pairs 2t, 2t, 2t+8, 2t+8 (16-bit); B registers at
// column g and rows t, t+4 (TF32) or row pairs 2t, 2t+8 (16-bit).
template <Mma M>
struct Tile {
  static constexpr int kStep = M == Mma::TF32 ? 8 : 16;
  __device__ static int row(int i, int, int lane) { return (i / 16) * 16 + lane / 4 + ((i % 4) >= 2 ? 8 : 0); }
  __device__ static int col(int i, int warp, int lane) {
    return (warp + 8 * ((i / 4) % 4)) * 8 + 2 * (lane % 4) + (i % 2);
  }
  __device__ static void stage(float (&acc)[32], const float* xs, int xs_stride, const float* vs, int vs_stride,
                               int hidden, int warp, int lane) {
    const int g = lane / 4, t = lane % 4;
    auto x_at = [&](int r, int k) { return xs[r * xs_stride + k]; };
    auto v_at = [&](int k, int n) { return n < hidden ? vs[k * vs_stride + n] : 0.f; };
#pragma unroll
    for (int kk = 0; kk < kK; kk += kStep) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int r = mt * 16 + g;
        if constexpr (M == Mma::TF32) {
          a[mt][0] = tf32_bits(x_at(r, kk + t));
          a[mt][1] = tf32_bits(x_at(r + 8, kk + t));
          a[mt][2] = tf32_bits(x_at(r, kk + t + 4));
          a[mt][3] = tf32_bits(x_at(r + 8, kk + t + 4));
        } else {
          a[mt][0] = pack16<M>(x_at(r, kk + 2 * t), x_at(r, kk + 2 * t + 1));
          a[mt][1] = pack16<M>(x_at(r + 8, kk + 2 * t), x_at(r + 8, kk + 2 * t + 1));
          a[mt][2] = pack16<M>(x_at(r, kk + 2 * t + 8), x_at(r, kk + 2 * t + 9));
          a[mt][3] = pack16<M>(x_at(r + 8, kk + 2 * t + 8), x_at(r + 8, kk + 2 * t + 9));
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n0 = (warp + 8 * j) * 8;
        if (n0 >= hidden) continue;  // the same for the whole warp
        const int n = n0 + g;
        uint32_t b[2];
        if constexpr (M == Mma::TF32) {
          b[0] = tf32_bits(v_at(kk + t, n));
          b[1] = tf32_bits(v_at(kk + t + 4, n));
        } else {
          b[0] = pack16<M>(v_at(kk + 2 * t, n), v_at(kk + 2 * t + 1, n));
          b[1] = pack16<M>(v_at(kk + 2 * t + 8, n), v_at(kk + 2 * t + 9, n));
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          float* c = acc + (mt * 4 + j) * 4;
          float frag[4] = {c[0], c[1], c[2], c[3]};
          mma<M>(frag, a[mt], b);
#pragma unroll
          for (int q = 0; q < 4; ++q) c[q] = frag[q];
        }
      }
    }
  }
};

// The network as the kernels read it: layer k maps n[k] features to n[k + 1]
// with weight w[k] (n[k + 1], n[k]) and bias b[k] (null if none); the hidden
// layers k < depth - 1 apply act[k]; h[k] is where hidden layer k's output
// goes (the forward writes it, the backward reads it). Passed by value: a
// kernel parameter of a few hundred bytes.
constexpr int kMaxFusedDepth = 16;

template <typename T>
struct FusedNet {
  const T* w[kMaxFusedDepth];
  const T* b[kMaxFusedDepth];
  T* h[kMaxFusedDepth];
  Activation act[kMaxFusedDepth];
  int n[kMaxFusedDepth + 1];
  int depth;
  int max_hidden;  // the widest hidden layer: the stride of the on-chip activations is max_hidden + 1
};

// Per block of kRows rows, layer after layer: each hidden layer's product
// (step 1), its bias + activation (step 2) into the on-chip activations, which
// the next layer reads in place of x; then the output layer and softmax
// (step 3). A hidden layer's output overwrites its input on chip: every read
// of the input is behind the stage loop's last barrier.
template <typename T, Mma M>
__global__ void __launch_bounds__(kThreads, 1) fused_forward_kernel(
    const T* __restrict__ x, FusedNet<T> net, T* __restrict__ out, int64_t rows, bool log) {
  FASTFFNN_DYNAMIC_SHARED(float, smem);
  const int classes = net.n[net.depth];
  const ForwardSmem<M> layout(net.max_hidden, classes);
  const int hs_stride = net.max_hidden + 1;
  float* xs = smem;                 // [kRows][x_stride]
  float* hs = xs + layout.x_stage;  // [kRows][max_hidden + 1]
  float* region = hs + layout.h;    // V stage [kK][v_stride], then W^T [hidden][w_stride]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;

  float acc[32];
  for (int layer = 0; layer + 1 < net.depth; ++layer) {
    const int in = net.n[layer], width = net.n[layer + 1];
    const T* __restrict__ Vw = net.w[layer];
    // the layout's padding for this layer's width (no wider than the widest layer's, which sized the region)
    const int v_stride = pad_to(width, M == Mma::TF32 ? 8 : 4);
    // ---- 1. acc = input @ V^T, kK input columns per shared-memory stage; the input is x for the
    // first layer, the previous layer's activations (on chip) after it.
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = 0.f;
    for (int k0 = 0; k0 < in; k0 += kK) {
      for (int e = tid; e < kRows * kK; e += kThreads) {
        const int r = e / kK, k = e % kK;
        const int64_t gr = row0 + r;
        float v = 0.f;
        if (k0 + k < in) v = layer == 0 ? (gr < rows ? static_cast<float>(x[gr * in + k0 + k]) : 0.f)
                                        : hs[r * hs_stride + k0 + k];
        xs[r * layout.x_stride + k] = v;
      }
      constexpr int kRun = ForwardSmem<M>::kVRun, kRowsPerPatch = 32 / kRun, kRunsPerRow = kK / kRun;
      const int patch_rows = (width + kRowsPerPatch - 1) / kRowsPerPatch * kRowsPerPatch;
      for (int e = tid; e < patch_rows * kK; e += kThreads) {
        const int patch = e / 32, l = e % 32;  // a warp's patch: kRun consecutive k of kRowsPerPatch rows of V
        const int c = (patch / kRunsPerRow) * kRowsPerPatch + l / kRun, k = (patch % kRunsPerRow) * kRun + l % kRun;
        if (c < width) {
          region[k * v_stride + c] = (k0 + k < in) ? static_cast<float>(Vw[static_cast<int64_t>(c) * in + k0 + k]) : 0.f;
        }
      }
      __syncthreads();
      Tile<M>::stage(acc, xs, layout.x_stride, region, v_stride, width, warp, lane);
      __syncthreads();
    }

    // ---- 2. h = act(acc + b), on chip and, for the backward, to global.
    const T* __restrict__ Vb = net.b[layer];
    T* __restrict__ hidden_out = net.h[layer];
    const Activation act = net.act[layer];
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int r = Tile<M>::row(i, warp, lane), c = Tile<M>::col(i, warp, lane);
      if (c >= width) continue;
      const float b = Vb ? static_cast<float>(Vb[c]) : 0.f;
      const T hv = static_cast<T>(act_forward(act, acc[i] + b));
      hs[r * hs_stride + c] = static_cast<float>(hv);  // the rounded value, as the general tier sees it
      const int64_t gr = row0 + r;
      if (hidden_out && gr < rows) hidden_out[gr * width + c] = hv;
    }
    __syncthreads();
  }

  // W^T into the region the V stages used (their last reads are behind the barriers above).
  const int hidden = net.n[net.depth - 1];
  const T* __restrict__ Ww = net.w[net.depth - 1];
  const T* __restrict__ Wb = net.b[net.depth - 1];
  for (int e = tid; e < classes * hidden; e += kThreads) {
    const int c = e / hidden, k = e % hidden;
    region[k * layout.w_stride + c] = static_cast<float>(Ww[static_cast<int64_t>(c) * hidden + k]);
  }
  __syncthreads();

  // ---- 3. z = h @ W^T + b, then (log-)softmax per row: lane owns classes lane and lane + 32.
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = warp * kRowsPerThread + i;
    const int64_t gr = row0 + r;
    if (gr >= rows) break;  // the same for the whole warp
    float z[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = lane + 32 * q;
      float s = (c < classes && Wb) ? static_cast<float>(Wb[c]) : 0.f;
      if (c < classes) {
        for (int k = 0; k < hidden; ++k) s = fmaf(hs[r * hs_stride + k], region[k * layout.w_stride + c], s);
      }
      z[q] = c < classes ? s : -std::numeric_limits<float>::infinity();
    }
    const float m = warp_max(nan_max(z[0], z[1]));
    float e[2], sum = 0.f;
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      e[q] = lane + 32 * q < classes ? dev_exp(z[q] - m) : 0.f;
      sum += e[q];
    }
    sum = warp_sum(sum);
    const float shift = m + dev_log(sum), inv = 1.f / sum;
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = lane + 32 * q;
      if (c < classes) out[gr * classes + c] = static_cast<T>(log ? z[q] - shift : e[q] * inv);
    }
  }
}

// The output layer's gradient, as the backward kernel reads it.
template <typename T>
struct OutputGradPtrs {
  const T* y;          // (rows, classes): probabilities, or log-probabilities (log / NLL)
  const T* dout;       // softmax: dL/d(output); null for the NLL
  bool log;            // softmax: y is log_softmax
  const int64_t* index;  // NLL: class indices, or null for
  const T* probs;        //      probability targets
  const T* grad_loss;    // NLL: dL/d(loss)
  bool per_row_grad;     // NLL: reduction 'none'
  float scale;           // NLL: 1/rows for 'mean'
};

// Where the backward kernel writes: dz[k], the gradient of layer k's
// pre-activation (rows, n[k + 1]), for the layers k >= lowest (dz[depth - 1]
// is the output layer's); partial[k], the block's column sums of dz[k]
// ([blocks][n[k + 1]], the bias gradient's partial sums), or null.
template <typename T>
struct FusedGrads {
  T* dz[kMaxFusedDepth];
  float* partial[kMaxFusedDepth];
  int lowest;
};

// The backward kernel's shared memory, in floats: the current layer's dz
// [kRows][ds_stride] (the output layer's, then each hidden layer's in its
// place), the stage of dz [kRows][kK + 4] and of W [kK][w_stride] for each
// hidden layer's product, and the per-warp column sums [kThreads / 32][width].
struct BackwardSmem {
  int ds_stride, x_stride, w_stride;
  int64_t ds, x_stage, w_stage, colsum;
  __host__ __device__ BackwardSmem(int max_hidden, int classes)
      : ds_stride((max_hidden > classes ? max_hidden : classes) + 1),
        x_stride(kK + 4),
        w_stride(max_hidden + 1),
        ds(static_cast<int64_t>(kRows) * ds_stride),
        x_stage(static_cast<int64_t>(kRows) * x_stride),
        w_stage(static_cast<int64_t>(kK) * w_stride),
        colsum(static_cast<int64_t>(kThreads / 32) * (max_hidden > classes ? max_hidden : classes)) {}
  __host__ __device__ int64_t floats() const { return ds + x_stage + w_stage + colsum; }
};

// Per block of kRows rows: the output layer's dz = dL/dz (from softmax's
// output and gradient, or from the NLL loss) on chip and out, with its column
// sums; then, layer by layer down to `lowest`, dz_k = (dz_{k+1} @ W_{k+1}) *
// act'(h_k): the product streams dz_{k+1} (on chip) and W_{k+1} through
// shared memory kK rows at a time, in exact float32 FMAs (Tile<Mma::None>),
// and dz_k replaces dz_{k+1} on chip once every read of it is done.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) fused_backward_kernel(OutputGradPtrs<T> grad, FusedNet<T> net,
                                                                     FusedGrads<T> out, int64_t rows) {
  FASTFFNN_DYNAMIC_SHARED(float, smem);
  const int classes = net.n[net.depth];
  const BackwardSmem layout(net.max_hidden, classes);
  float* ds = smem;                      // [kRows][ds_stride]
  float* xs = ds + layout.ds;            // [kRows][x_stride]
  float* ws = xs + layout.x_stage;       // [kK][w_stride]
  float* colsum = ws + layout.w_stage;   // [kThreads / 32][width]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int top = net.depth - 1;

  // ---- the output layer's dz, one row per warp at a time.
  T* __restrict__ dz_top = out.dz[top];
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = warp * kRowsPerThread + i;
    const int64_t gr = row0 + r;
    float d2[2] = {0.f, 0.f};
    if (gr < rows) {  // the same for the whole warp, as the warp sums need
      float yv[2], other[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int c = lane + 32 * q;
        yv[q] = c < classes ? static_cast<float>(grad.y[gr * classes + c]) : 0.f;
      }
      if (grad.dout) {
        // softmax: dz = y * (d - <d, y>); log_softmax: dz = d - exp(y) * sum(d)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int c = lane + 32 * q;
          other[q] = c < classes ? static_cast<float>(grad.dout[gr * classes + c]) : 0.f;
        }
        const float s = warp_sum(grad.log ? other[0] + other[1] : other[0] * yv[0] + other[1] * yv[1]);
#pragma unroll
        for (int q = 0; q < 2; ++q) d2[q] = grad.log ? other[q] - dev_exp(yv[q]) * s : yv[q] * (other[q] - s);
      } else {
        // NLL on log-probabilities y: dz = w * (sum(t) * exp(y) - t)
        const float w = static_cast<float>(grad.grad_loss[grad.per_row_grad ? gr : 0]) * grad.scale;
        float tsum = 1.f;
        if (grad.index) {
          const int64_t t = grad.index[gr];
#pragma unroll
          for (int q = 0; q < 2; ++q) other[q] = (lane + 32 * q) == t ? 1.f : 0.f;
          // outside [0, classes) (only under graph capture, where no range check runs): NaN gradients, as the
          // general tier's
          if (t < 0 || t >= classes) tsum = std::numeric_limits<float>::quiet_NaN();
        } else {
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int c = lane + 32 * q;
            other[q] = c < classes ? static_cast<float>(grad.probs[gr * classes + c]) : 0.f;
          }
          tsum = warp_sum(other[0] + other[1]);
        }
#pragma unroll
        for (int q = 0; q < 2; ++q) d2[q] = w * (tsum * dev_exp(yv[q]) - other[q]);
      }
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int c = lane + 32 * q;
        if (c < classes) {
          const T rounded = static_cast<T>(d2[q]);  // what the weight-gradient product will read
          dz_top[gr * classes + c] = rounded;
          d2[q] = static_cast<float>(rounded);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = lane + 32 * q;
      if (c < classes) ds[r * layout.ds_stride + c] = d2[q];
    }
  }
  __syncthreads();
  if (out.partial[top]) {
    for (int c = tid; c < classes; c += kThreads) {
      float s = 0.f;
      for (int r = 0; r < kRows; ++r) s += ds[r * layout.ds_stride + c];
      out.partial[top][static_cast<int64_t>(blockIdx.x) * classes + c] = s;
    }
  }

  // ---- the hidden layers, from the top down.
  float acc[32];
  for (int k = top - 1; k >= out.lowest; --k) {
    const int width = net.n[k + 1], K = net.n[k + 2];  // dz_k is (rows, width); dz_{k+1} (rows, K)
    const T* __restrict__ W = net.w[k + 1];             // (K, width)
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = 0.f;
    for (int o0 = 0; o0 < K; o0 += kK) {
      for (int e = tid; e < kRows * kK; e += kThreads) {
        const int r = e / kK, o = e % kK;
        xs[r * layout.x_stride + o] = o0 + o < K ? ds[r * layout.ds_stride + o0 + o] : 0.f;
      }
      for (int e = tid; e < kK * width; e += kThreads) {
        const int o = e / width, c = e % width;
        ws[o * layout.w_stride + c] = o0 + o < K ? static_cast<float>(W[static_cast<int64_t>(o0 + o) * width + c]) : 0.f;
      }
      __syncthreads();
      Tile<Mma::None>::stage(acc, xs, layout.x_stride, ws, layout.w_stride, width, warp, lane);
      __syncthreads();
    }
    // dz_k = acc * act'(h_k), rounded as the weight-gradient product will read it, on chip in place of
    // dz_{k+1} (whose last reads are behind the barrier above) and out; the column sums per warp.
    const T* __restrict__ h = net.h[k];
    T* __restrict__ dz = out.dz[k];
    const Activation act = net.act[k];
    float sums[kColsPerThread];
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) sums[j] = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int r = Tile<Mma::None>::row(i, warp, lane), c = Tile<Mma::None>::col(i, warp, lane);
      if (c >= width) continue;
      const int64_t gr = row0 + r;
      float g = 0.f;
      if (gr < rows) {
        const T rounded = static_cast<T>(act_backward(act, static_cast<float>(h[gr * width + c]), acc[i]));
        dz[gr * width + c] = rounded;
        g = static_cast<float>(rounded);
      }
      ds[r * layout.ds_stride + c] = g;
      sums[i % kColsPerThread] += g;
    }
    if (out.partial[k]) {
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) {
        const int c = lane + 32 * j;
        if (c < width) colsum[warp * width + c] = sums[j];
      }
    }
    __syncthreads();
    if (out.partial[k]) {
      for (int c = tid; c < width; c += kThreads) {
        float s = 0.f;
        for (int w = 0; w < kThreads / 32; ++w) s += colsum[w * width + c];
        out.partial[k][static_cast<int64_t>(blockIdx.x) * width + c] = s;
      }
    }
    __syncthreads();  // the column sums are read before the next layer writes them
  }
}

// The tensor cores need an sm_80 device and code compiled for sm_80 or newer
// (mma's branch for older code is __trap()); float32 uses them (as TF32) only
// when torch.backends.cuda.matmul.allow_tf32 is on, as cuBLAS does.
Mma tensor_core_mode(at::ScalarType t, const DeviceInfo& device) {
  if (device.major < 8 || device.code_arch < 80) return Mma::None;
  if (t == at::kBFloat16) return Mma::BF16;
  if (t == at::kHalf) return Mma::FP16;
  return at::globalContext().allowTF32CuBLAS() ? Mma::TF32 : Mma::None;
}

bool eligible_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Raises a kernel's dynamic shared-memory limit (48 KB without it) to what a
// launch needs, when it needs more than it has been given on this device.
template <typename... Params>
void allow_shared_memory(void (*kernel)(Params...), size_t bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> raised;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& now = raised[{reinterpret_cast<const void*>(kernel), device}];
  if (now >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  now = bytes;
}

size_t forward_smem_bytes(int hidden, int classes, Mma mode) {
  switch (mode) {
    case Mma::TF32:
      return ForwardSmem<Mma::TF32>(hidden, classes).floats() * sizeof(float);
    case Mma::BF16:
      return ForwardSmem<Mma::BF16>(hidden, classes).floats() * sizeof(float);
    case Mma::FP16:
      return ForwardSmem<Mma::FP16>(hidden, classes).floats() * sizeof(float);
    case Mma::None:
      break;
  }
  return ForwardSmem<Mma::None>(hidden, classes).floats() * sizeof(float);
}

size_t backward_smem_bytes(int max_hidden, int classes) {
  return static_cast<size_t>(BackwardSmem(max_hidden, classes).floats()) * sizeof(float);
}

// The auto heuristic's priors, until a GPU measures the crossover
// (python -m fastffnn bench --tiers general,fused times both). One launch
// instead of two per layer, and no round trip of the hidden matrices through
// memory, wins where a block's work is short; but every block streams every
// layer's weights, so wide layers make each block long, and a few long blocks
// leave most of the GPU idle where cuBLAS would spread the products. So: the
// fused tier while a block's hidden-layer products, 2 * kRows * (the sum of
// in * out over the hidden layers) FLOPs, take at most about 10 us on one
// SM, taking an SM at about 0.25 TFLOP/s in float32 FMAs and 1.5 TFLOP/s on
// the tensor cores (mma.sync, roughly half of an H100 SM's peak each), and
// for batches up to 4096 rows, beyond which cuBLAS's tiled products win.
constexpr int64_t kAutoMaxRows = 4096;
constexpr double kAutoBlockSeconds = 10e-6;
constexpr double kSmFmaFlops = 0.25e12;
constexpr double kSmTensorFlops = 1.5e12;

// `macs`: the multiply-adds per row of the network's hidden layers.
bool auto_prefers_fused(int64_t rows, double macs, Mma mode) {
  if (rows > kAutoMaxRows) return false;
  const double block_flops = 2.0 * kRows * macs;
  return block_flops / (mode == Mma::None ? kSmFmaFlops : kSmTensorFlops) <= kAutoBlockSeconds;
}

enum class Tier : int { Auto, General, Fused };

Tier parse_tier(c10::string_view name) {
  if (name == "auto") return Tier::Auto;
  if (name == "general") return Tier::General;
  if (name == "fused") return Tier::Fused;
  TORCH_CHECK_VALUE(false, "fastffnn: the CUDA tier must be 'auto', 'general' or 'fused', got '", std::string(name),
                    "'");
}

// The tier setting: FASTFFNN_CUDA_TIER, read at the first use, or what
// fastffnn.set_cuda_tier() stored (which also replaces a bad environment value).
constexpr int kTierUnread = -1;
std::atomic<int> g_tier{kTierUnread};

Tier current_tier() {
  int tier = g_tier.load(std::memory_order_relaxed);
  if (tier == kTierUnread) {
    const char* env = std::getenv("FASTFFNN_CUDA_TIER");
    int parsed = static_cast<int>(env == nullptr || *env == '\0' ? Tier::Auto : parse_tier(env));
    g_tier.compare_exchange_strong(tier, parsed);  // a concurrent set_cuda_tier wins
    tier = g_tier.load(std::memory_order_relaxed);
  }
  return static_cast<Tier>(tier);
}

const char* tier_name(Tier tier) {
  switch (tier) {
    case Tier::General:
      return "general";
    case Tier::Fused:
      return "fused";
    case Tier::Auto:
      break;
  }
  return "auto";
}

// The fused tier's dtypes only (float64 always takes the general tier).
#define FASTFFNN_DISPATCH_FUSED_TYPES(type, name, ...)                 \
  AT_DISPATCH_SWITCH(type, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace

bool fused_tier_applies(const at::Tensor& x, const Network& net) {
  const size_t depth = net.depth();
  if (!eligible_dtype(x.scalar_type()) || depth < 2 || depth > static_cast<size_t>(kMaxFusedDepth)) return false;
  const int64_t classes = net.weights.back().size(0);
  if (classes < 1 || classes > kMaxOut) return false;
  int64_t max_hidden = 0;
  double macs = 0;
  for (size_t k = 0; k + 1 < depth; ++k) {
    const int64_t width = net.weights[k].size(0);
    if (width < 1 || width > kMaxHidden) return false;
    max_hidden = std::max(max_hidden, width);
    macs += static_cast<double>(width) * static_cast<double>(net.weights[k].size(1));
  }
  const Tier tier = current_tier();
  if (tier == Tier::General) return false;
  // Both kernels must fit the device's shared memory (227 KB per block on
  // Hopper, 163 KB on sm_80/87, 99 KB on sm_86/89/120, 64 KB on sm_75).
  const DeviceInfo& device = current_device_info();
  if (ceil_div(x.size(0), kRows) > device.max_grid_x) return false;  // a block per kRows rows: too many blocks
  const Mma mode = tensor_core_mode(x.scalar_type(), device);
  const auto limit = static_cast<size_t>(device.smem_optin);
  if (forward_smem_bytes(static_cast<int>(max_hidden), static_cast<int>(classes), mode) > limit ||
      backward_smem_bytes(static_cast<int>(max_hidden), static_cast<int>(classes)) > limit) {
    return false;
  }
  return tier == Tier::Fused || auto_prefers_fused(x.size(0), macs, mode);
}

namespace {

// A block per kRows rows; fused_tier_applies has refused where that is more than the device's grid allows.
dim3 fused_grid(int64_t rows) {
  const int64_t blocks = ceil_div(rows, kRows);
  TORCH_INTERNAL_ASSERT(blocks <= current_device_info().max_grid_x, "fastffnn: the fused tier ran ", rows,
                        " rows, more than its grid allows");
  return dim3(static_cast<unsigned>(blocks));
}

// The network's pointers as the kernels take them (contiguous copies where needed are kept in `keep`).
template <typename T>
FusedNet<T> fused_net(const Network& net, std::vector<at::Tensor>& keep) {
  FusedNet<T> f{};
  f.depth = static_cast<int>(net.depth());
  for (size_t k = 0; k < net.depth(); ++k) {
    keep.push_back(net.weights[k].contiguous());
    f.w[k] = keep.back().const_data_ptr<T>();
    const auto b = net.bias(k);
    if (b.has_value()) {
      keep.push_back(b->contiguous());
      f.b[k] = keep.back().const_data_ptr<T>();
    }
    f.n[k] = static_cast<int>(net.weights[k].size(1));
    f.n[k + 1] = static_cast<int>(net.weights[k].size(0));
    if (k + 1 < net.depth()) {
      f.act[k] = net.acts[k];
      f.max_hidden = std::max(f.max_hidden, f.n[k + 1]);
    }
  }
  return f;
}

}  // namespace

std::pair<at::Tensor, std::vector<at::Tensor>> fused_network_forward(const at::Tensor& x, const Network& net,
                                                                     bool log) {
  const int64_t rows = x.size(0);
  const int classes = static_cast<int>(net.weights.back().size(0));
  auto out = at::empty({rows, classes}, x.options());
  std::vector<at::Tensor> hidden;
  for (size_t k = 0; k + 1 < net.depth(); ++k) hidden.push_back(at::empty({rows, net.weights[k].size(0)}, x.options()));
  if (rows == 0) return {out, hidden};
  const auto xc = x.contiguous();
  const dim3 grid = fused_grid(rows);
  const Mma mode = tensor_core_mode(x.scalar_type(), current_device_info());
  FASTFFNN_DISPATCH_FUSED_TYPES(x.scalar_type(), "fastffnn.fused_forward", [&] {
    std::vector<at::Tensor> keep;
    FusedNet<scalar_t> f = fused_net<scalar_t>(net, keep);
    for (size_t k = 0; k < hidden.size(); ++k) f.h[k] = hidden[k].data_ptr<scalar_t>();
    const size_t bytes = forward_smem_bytes(f.max_hidden, classes, mode);
    auto run = [&](auto kernel) {
      allow_shared_memory(kernel, bytes);
      launch("fused_forward_kernel", kernel, grid, dim3(kThreads), bytes, xc.const_data_ptr<scalar_t>(), f,
             out.data_ptr<scalar_t>(), rows, log);
    };
    if (mode == Mma::None) {
      run(fused_forward_kernel<scalar_t, Mma::None>);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      run(fused_forward_kernel<scalar_t, Mma::TF32>);
    } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      run(fused_forward_kernel<scalar_t, Mma::BF16>);
    } else {
      run(fused_forward_kernel<scalar_t, Mma::FP16>);
    }
  });
  return {out, hidden};
}

std::vector<at::Tensor> fused_network_backward(const OutputGradient& grad, const Network& net,
                                               const std::vector<at::Tensor>& hidden, int lowest,
                                               std::vector<at::Tensor*> grad_biases) {
  const at::Tensor& y = grad.output;
  const int64_t rows = y.size(0);
  const int depth = static_cast<int>(net.depth());
  std::vector<at::Tensor> dz(depth);
  for (int k = lowest; k < depth; ++k) dz[k] = at::empty({rows, net.weights[k].size(0)}, y.options());
  if (rows == 0) {
    for (at::Tensor* g : grad_biases)
      if (g) g->zero_();
    return dz;
  }
  const dim3 grid = fused_grid(rows);
  const int64_t blocks = grid.x;
  std::vector<at::Tensor> partial(depth);
  for (int k = lowest; k < depth; ++k)
    if (grad_biases[k]) partial[k] = at::empty({blocks, net.weights[k].size(0)}, y.options().dtype(at::kFloat));
  FASTFFNN_DISPATCH_FUSED_TYPES(y.scalar_type(), "fastffnn.fused_backward", [&] {
    OutputGradPtrs<scalar_t> ptrs{};
    ptrs.y = y.const_data_ptr<scalar_t>();
    ptrs.log = grad.log;
    if (grad.nll) {
      ptrs.index = grad.is_index ? grad.target.const_data_ptr<int64_t>() : nullptr;
      ptrs.probs = grad.is_index ? nullptr : grad.target.const_data_ptr<scalar_t>();
      ptrs.grad_loss = grad.grad_loss.const_data_ptr<scalar_t>();
      ptrs.per_row_grad = grad.reduction == Reduction::None;
      ptrs.scale = grad.reduction == Reduction::Mean ? 1.f / static_cast<float>(rows) : 1.f;
    } else {
      ptrs.dout = grad.grad_output.const_data_ptr<scalar_t>();
    }
    std::vector<at::Tensor> keep;
    FusedNet<scalar_t> f = fused_net<scalar_t>(net, keep);
    for (size_t k = 0; k < hidden.size(); ++k) {
      keep.push_back(hidden[k].contiguous());
      f.h[k] = const_cast<scalar_t*>(keep.back().const_data_ptr<scalar_t>());  // read only by the backward
    }
    FusedGrads<scalar_t> g{};
    g.lowest = lowest;
    for (int k = lowest; k < depth; ++k) {
      g.dz[k] = dz[k].data_ptr<scalar_t>();
      g.partial[k] = partial[k].defined() ? partial[k].data_ptr<float>() : nullptr;
    }
    const int classes = static_cast<int>(y.size(1));
    const size_t bytes = backward_smem_bytes(f.max_hidden, classes);
    auto kernel = fused_backward_kernel<scalar_t>;
    allow_shared_memory(kernel, bytes);
    launch("fused_backward_kernel", kernel, grid, dim3(kThreads), bytes, ptrs, f, g,
           rows);
    for (int k = lowest; k < depth; ++k) {
      if (!grad_biases[k]) continue;
      const int64_t n = net.weights[k].size(0);
      launch("finish_colsum_kernel", finish_colsum_kernel<scalar_t, float>,
             dim3(static_cast<unsigned>(ceil_div(n, 256))), dim3(256), 0, partial[k].const_data_ptr<float>(), blocks,
             n, grad_biases[k]->data_ptr<scalar_t>());
    }
  });
  return dz;
}

}  // namespace fastffnn::cuda

// fastffnn.set_cuda_tier(name) and fastffnn.cuda_tier(), in CUDA builds.
TORCH_LIBRARY_FRAGMENT(fastffnn, m) {
  m.def("_set_cuda_tier(str tier) -> ()", [](c10::string_view name) {
    fastffnn::cuda::g_tier.store(static_cast<int>(fastffnn::cuda::parse_tier(name)));
  });
  m.def("_cuda_tier() -> str",
        []() -> std::string { return fastffnn::cuda::tier_name(fastffnn::cuda::current_tier()); });
}
