// The fully fused CUDA tier, for narrow networks (hidden <= 256, classes <=
// 64, float32/float16/bfloat16): the whole forward in one kernel, and the
// backward's row-local work (both layers' pre-activation gradients and the
// bias gradients) in one kernel, a tile of rows per block, with the
// activations or gradients between the two layers in shared memory, in the spirit of
// tiny-cuda-nn's fully fused MLP (but with biases, softmax and any width up
// to the bounds). The first layer's products run on the tensor cores
// (mma.sync: TF32 for float32 when allowed, bf16/fp16 for those dtypes) or as
// exact float32 FMAs; the second layer, at most 256 x 64 per row, in FMAs.
//
// Forward, per block of kRows rows:
//   1. h = x @ V^T, streaming x and V through shared memory kK columns of the
//      input at a time; each thread accumulates a 4 x 8 register tile of h.
//   2. h = act(h + V_bias), kept in shared memory (and written out when the
//      backward will need it).
//   3. z = h @ W^T + W_bias with W^T staged in shared memory, one warp per 4
//      rows, each lane two classes; then softmax or log_softmax per row with
//      warp reductions, written out.
// Backward, per block of kRows rows: dz2 = dL/dz from the softmax output and
//   its gradient (or from the NLL loss), kept in shared memory; then
//   dz1 = (dz2 @ W) * act'(h) with W in shared memory. Both are written out
//   for the weight and input gradients (cuBLAS), and the block's column sums
//   of both (the bias gradients) are reduced in a fixed order.
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

// How the first layer's products are computed: exact float32 FMAs, or the
// tensor cores (mma.sync, sm_80+) with TF32 operands for float32 (when
// torch.backends.cuda.matmul.allow_tf32 allows) and bfloat16/float16 operands
// for those dtypes, always accumulating in float32.
enum class Mma { None, TF32, BF16, FP16 };

// The smallest s >= n with s % 32 == residue.
__host__ __device__ constexpr int pad_to(int n, int residue) { return n + ((residue - n) % 32 + 32) % 32; }

// The forward kernel's shared memory, in floats: the x stage
// [kRows][x_stride], h [kRows][hidden + 1], and a region that holds first
// the V stage (V^T of kK input columns, [kK][v_stride]) and then W^T
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
#else
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
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
  __trap();  // the host never picks a tensor-core path below sm_80
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

template <typename T, Activation A, Mma M>
__global__ void __launch_bounds__(kThreads, 1) fused_forward_kernel(
    const T* __restrict__ x, const T* __restrict__ Vw, const T* __restrict__ Vb, const T* __restrict__ Ww,
    const T* __restrict__ Wb, T* __restrict__ out, T* __restrict__ hidden_out, int64_t rows, int in, int hidden,
    int classes, bool log) {
  FASTFFNN_DYNAMIC_SHARED(float, smem);
  const ForwardSmem<M> layout(hidden, classes);
  float* xs = smem;                 // [kRows][x_stride]
  float* hs = xs + layout.x_stage;  // [kRows][hidden + 1]
  float* region = hs + layout.h;    // V stage [kK][v_stride], then W^T [hidden][w_stride]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;

  // ---- 1. h = x @ V^T, kK input columns per shared-memory stage.
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  for (int k0 = 0; k0 < in; k0 += kK) {
    for (int e = tid; e < kRows * kK; e += kThreads) {
      const int r = e / kK, k = e % kK;
      const int64_t gr = row0 + r;
      xs[r * layout.x_stride + k] = (gr < rows && k0 + k < in) ? static_cast<float>(x[gr * in + k0 + k]) : 0.f;
    }
    constexpr int kRun = ForwardSmem<M>::kVRun, kRowsPerPatch = 32 / kRun, kRunsPerRow = kK / kRun;
    const int patch_rows = (hidden + kRowsPerPatch - 1) / kRowsPerPatch * kRowsPerPatch;
    for (int e = tid; e < patch_rows * kK; e += kThreads) {
      const int patch = e / 32, l = e % 32;  // a warp's patch: kRun consecutive k of kRowsPerPatch rows of V
      const int c = (patch / kRunsPerRow) * kRowsPerPatch + l / kRun, k = (patch % kRunsPerRow) * kRun + l % kRun;
      if (c < hidden) {
        region[k * layout.v_stride + c] =
            (k0 + k < in) ? static_cast<float>(Vw[static_cast<int64_t>(c) * in + k0 + k]) : 0.f;
      }
    }
    __syncthreads();
    Tile<M>::stage(acc, xs, layout.x_stride, region, layout.v_stride, hidden, warp, lane);
    __syncthreads();
  }

  // ---- 2. h = act(h + b), into shared memory and, for the backward, to global.
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int r = Tile<M>::row(i, warp, lane), c = Tile<M>::col(i, warp, lane);
    if (c >= hidden) continue;
    const float b = Vb ? static_cast<float>(Vb[c]) : 0.f;
    const T hv = static_cast<T>(Act<A>::forward(acc[i] + b));
    hs[r * (hidden + 1) + c] = static_cast<float>(hv);  // the rounded value, as the general tier sees it
    const int64_t gr = row0 + r;
    if (hidden_out && gr < rows) hidden_out[gr * hidden + c] = hv;
  }
  // W^T into the region the V stage used (the last stage's reads are behind the barrier above).
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
        for (int k = 0; k < hidden; ++k) s = fmaf(hs[r * (hidden + 1) + k], region[k * layout.w_stride + c], s);
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

// Per block of kRows rows: dz2 = dL/dz into shared memory (and out, for the
// weight gradient), the block's column sums of dz2; then, if need_dz1,
// dz1 = (dz2 @ W) * act'(h) and the block's column sums of dz1. Warp w owns
// rows 4w..4w+3; for dz2 its lanes own classes lane and lane + 32, for dz1
// hidden columns lane + 32j.
template <typename T, Activation A>
__global__ void __launch_bounds__(kThreads, 1) fused_backward_kernel(
    OutputGradPtrs<T> grad, const T* __restrict__ Ww, const T* __restrict__ h, T* __restrict__ dz2,
    T* __restrict__ dz1, float* __restrict__ partial_W, float* __restrict__ partial_V, int64_t rows, int hidden,
    int classes, bool need_dz1) {
  FASTFFNN_DYNAMIC_SHARED(float, smem);
  float* ws = smem;                            // [classes][hidden]
  float* ds = ws + classes * hidden;           // [kRows][classes + 1]
  float* colsum = ds + kRows * (classes + 1);  // [kThreads / 32][hidden]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  if (need_dz1) {
    for (int e = tid; e < classes * hidden; e += kThreads) ws[e] = static_cast<float>(Ww[e]);
  }

  // ---- dz2, one row per warp at a time.
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
          dz2[gr * classes + c] = rounded;
          d2[q] = static_cast<float>(rounded);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int c = lane + 32 * q;
      if (c < classes) ds[r * (classes + 1) + c] = d2[q];
    }
  }
  __syncthreads();
  for (int c = tid; c < classes; c += kThreads) {
    float s = 0.f;
    for (int r = 0; r < kRows; ++r) s += ds[r * (classes + 1) + c];
    partial_W[static_cast<int64_t>(blockIdx.x) * classes + c] = s;
  }
  if (!need_dz1) return;  // the same for the whole block

  // ---- dz1 = (dz2 @ W) * act'(h), dz2 read from shared memory.
  float sums[kColsPerThread];
#pragma unroll
  for (int j = 0; j < kColsPerThread; ++j) sums[j] = 0.f;
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int r = warp * kRowsPerThread + i;
    const int64_t gr = row0 + r;
    if (gr >= rows) break;
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int c = lane + 32 * j;
      if (c >= hidden) continue;
      float dh = 0.f;
      for (int o = 0; o < classes; ++o) dh = fmaf(ds[r * (classes + 1) + o], ws[o * hidden + c], dh);
      const float g = Act<A>::backward(static_cast<float>(h[gr * hidden + c]), dh);
      const T rounded = static_cast<T>(g);
      dz1[gr * hidden + c] = rounded;
      sums[j] += static_cast<float>(rounded);
    }
  }
  // The block's column sums of dz1: per warp, then over the warps in order.
#pragma unroll
  for (int j = 0; j < kColsPerThread; ++j) {
    const int c = lane + 32 * j;
    if (c < hidden) colsum[warp * hidden + c] = sums[j];
  }
  __syncthreads();
  for (int c = tid; c < hidden; c += kThreads) {
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += colsum[w * hidden + c];
    partial_V[static_cast<int64_t>(blockIdx.x) * hidden + c] = s;
  }
}

// The tensor cores need sm_80 or newer; float32 uses them (as TF32) only when
// torch.backends.cuda.matmul.allow_tf32 is on, as cuBLAS does.
Mma tensor_core_mode(at::ScalarType t, const DeviceInfo& device) {
  if (device.major < 8) return Mma::None;
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

size_t backward_smem_bytes(int hidden, int classes) {
  return (static_cast<size_t>(classes) * hidden + kRows * (classes + 1) + (kThreads / 32) * hidden) * sizeof(float);
}

// The auto heuristic's priors, until a GPU measures the crossover
// (benchmarks/bench_gpu.py times both tiers). One launch instead of five, and
// no round trip of the hidden matrix through memory, wins where a block's
// work is short; but every block streams all of V, so a wide layer makes each
// block long, and a few long blocks leave most of the GPU idle where cuBLAS
// would spread the product. So: the fused tier while a block's first-layer
// product, 2 * kRows * in * hidden FLOPs, takes at most about 10 us on one
// SM, taking an SM at about 0.25 TFLOP/s in float32 FMAs and 1.5 TFLOP/s on
// the tensor cores (mma.sync, roughly half of an H100 SM's peak each), and
// for batches up to 4096 rows, beyond which cuBLAS's tiled products win.
constexpr int64_t kAutoMaxRows = 4096;
constexpr double kAutoBlockSeconds = 10e-6;
constexpr double kSmFmaFlops = 0.25e12;
constexpr double kSmTensorFlops = 1.5e12;

bool auto_prefers_fused(int64_t rows, int64_t in, int64_t hidden, Mma mode) {
  if (rows > kAutoMaxRows) return false;
  const double block_flops = 2.0 * kRows * static_cast<double>(in) * static_cast<double>(hidden);
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

bool fused_tier_applies(const at::Tensor& x, int64_t in, int64_t hidden, int64_t classes) {
  if (!eligible_dtype(x.scalar_type()) || hidden < 1 || hidden > kMaxHidden ||
      classes < 1 || classes > kMaxOut) {
    return false;
  }
  const Tier tier = current_tier();
  if (tier == Tier::General) return false;
  // Both kernels must fit the device's shared memory (227 KB per block on
  // Hopper, 163 KB on sm_80/87, 99 KB on sm_86/89/120, 64 KB on sm_75).
  const DeviceInfo& device = current_device_info();
  const Mma mode = tensor_core_mode(x.scalar_type(), device);
  const auto limit = static_cast<size_t>(device.smem_optin);
  if (forward_smem_bytes(static_cast<int>(hidden), static_cast<int>(classes), mode) > limit ||
      backward_smem_bytes(static_cast<int>(hidden), static_cast<int>(classes)) > limit) {
    return false;
  }
  return tier == Tier::Fused || auto_prefers_fused(x.size(0), in, hidden, mode);
}

std::pair<at::Tensor, at::Tensor> fused_ffnn_forward(const at::Tensor& x, const at::Tensor& V_weight,
                                                     const c10::optional<at::Tensor>& V_bias,
                                                     const at::Tensor& W_weight,
                                                     const c10::optional<at::Tensor>& W_bias, Activation act,
                                                     bool log) {
  const int64_t rows = x.size(0);
  const int in = static_cast<int>(x.size(1)), hidden = static_cast<int>(V_weight.size(0)),
            classes = static_cast<int>(W_weight.size(0));
  auto out = at::empty({rows, classes}, x.options());
  auto h = at::empty({rows, hidden}, x.options());
  if (rows == 0) return {out, h};
  const auto xc = x.contiguous(), Vc = V_weight.contiguous(), Wc = W_weight.contiguous();
  const auto Vbc = V_bias ? c10::optional<at::Tensor>(V_bias->contiguous()) : c10::nullopt;
  const auto Wbc = W_bias ? c10::optional<at::Tensor>(W_bias->contiguous()) : c10::nullopt;
  const dim3 grid(static_cast<unsigned>(ceil_div(rows, kRows)));
  const Mma mode = tensor_core_mode(x.scalar_type(), current_device_info());
  const size_t bytes = forward_smem_bytes(hidden, classes, mode);
  FASTFFNN_DISPATCH_FUSED_TYPES(x.scalar_type(), "fastffnn.fused_forward", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      auto run = [&](auto kernel) {
        allow_shared_memory(kernel, bytes);
        launch("fused_forward_kernel", kernel, grid, dim3(kThreads), bytes, xc.const_data_ptr<scalar_t>(),
               Vc.const_data_ptr<scalar_t>(), Vbc ? Vbc->const_data_ptr<scalar_t>() : nullptr,
               Wc.const_data_ptr<scalar_t>(), Wbc ? Wbc->const_data_ptr<scalar_t>() : nullptr,
               out.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), rows, in, hidden, classes, log);
      };
      if (mode == Mma::None) {
        run(fused_forward_kernel<scalar_t, A, Mma::None>);
      } else if constexpr (std::is_same_v<scalar_t, float>) {
        run(fused_forward_kernel<scalar_t, A, Mma::TF32>);
      } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
        run(fused_forward_kernel<scalar_t, A, Mma::BF16>);
      } else {
        run(fused_forward_kernel<scalar_t, A, Mma::FP16>);
      }
    });
  });
  return {out, h};
}

std::pair<at::Tensor, at::Tensor> fused_network_backward(const OutputGradient& grad, const at::Tensor& W_weight,
                                                         const at::Tensor& hidden, Activation act,
                                                         at::Tensor* grad_W_bias, at::Tensor* grad_V_bias,
                                                         bool need_dz1) {
  const at::Tensor& y = grad.output;
  const int64_t rows = y.size(0);
  const int classes = static_cast<int>(y.size(1)), hid = static_cast<int>(hidden.size(1));
  auto dz2 = at::empty({rows, classes}, y.options());
  auto dz1 = need_dz1 ? at::empty({rows, hid}, hidden.options()) : at::empty({0}, hidden.options());
  if (rows == 0) {
    if (grad_W_bias) grad_W_bias->zero_();
    if (grad_V_bias) grad_V_bias->zero_();
    return {dz2, dz1};
  }
  const int64_t blocks = ceil_div(rows, kRows);
  auto partial_W = at::empty({blocks, classes}, y.options().dtype(at::kFloat));
  auto partial_V = at::empty({need_dz1 ? blocks : 0, hid}, y.options().dtype(at::kFloat));
  const auto Wc = W_weight.contiguous();
  const size_t bytes = backward_smem_bytes(hid, classes);
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
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      auto kernel = fused_backward_kernel<scalar_t, A>;
      allow_shared_memory(kernel, bytes);
      launch("fused_backward_kernel", kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), bytes, ptrs,
             Wc.const_data_ptr<scalar_t>(), hidden.const_data_ptr<scalar_t>(), dz2.data_ptr<scalar_t>(),
             need_dz1 ? dz1.data_ptr<scalar_t>() : nullptr, partial_W.data_ptr<float>(),
             need_dz1 ? partial_V.data_ptr<float>() : nullptr, rows, hid, classes, need_dz1);
    });
    auto finish = [&](const at::Tensor& partial, int n, at::Tensor* out) {
      launch("finish_colsum_kernel", finish_colsum_kernel<scalar_t, float>,
             dim3(static_cast<unsigned>(ceil_div(n, 256))), dim3(256), 0, partial.const_data_ptr<float>(),
             static_cast<int64_t>(blocks), static_cast<int64_t>(n), out->data_ptr<scalar_t>());
    };
    if (grad_W_bias) finish(partial_W, classes, grad_W_bias);
    if (grad_V_bias && need_dz1) finish(partial_V, hid, grad_V_bias);
  });
  return {dz2, dz1};
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
