// Fused CUDA kernels for WeNet conformer inference.
//
// Plain C launchers (no torch / TensorRT headers), so one shared library serves the torch
// custom ops (bound from Python through ctypes + torch.library) and the TensorRT plugins.
// Activations are float32, float16 or bfloat16 (dtype code 0/1/2); every reduction, norm
// statistic, softmax and log-softmax accumulates in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <initializer_list>

#include "wenet_kernels.h"

namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct SumOp {
  static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
  static __device__ __forceinline__ float identity() { return 0.f; }
};
struct MaxOp {
  static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
  static __device__ __forceinline__ float identity() { return -INFINITY; }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v) {
  for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }

// Block-wide reduction; `red` holds >= 32 floats. All threads get the result.
template <typename Op>
__device__ float block_reduce(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_reduce<Op>(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = (threadIdx.x < nw) ? red[threadIdx.x] : Op::identity();
  if (wid == 0) v = warp_reduce<Op>(v);
  if (threadIdx.x == 0) red[0] = v;
  __syncthreads();
  return red[0];
}
__device__ float block_sum(float v, float* red) { return block_reduce<SumOp>(v, red); }
__device__ float block_max(float v, float* red) { return block_reduce<MaxOp>(v, red); }

// ---------------------------------------------------------------------------------------
// s = x + alpha * delta (delta optional);  sum_out = s (optional);  norm_out = LN(s)
// One block per row; the row is staged in shared memory (cols floats).
template <typename T>
__global__ void add_layernorm_kernel(T* __restrict__ sum_out, T* __restrict__ norm_out,
                                     const T* __restrict__ x, const T* __restrict__ delta,
                                     float alpha, const T* __restrict__ gamma,
                                     const T* __restrict__ beta, int cols, float eps) {
  extern __shared__ float srow[];
  __shared__ float red[32];
  const size_t base = (size_t)blockIdx.x * cols;
  float local = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = to_f(x[base + c]);
    if (delta) v += alpha * to_f(delta[base + c]);
    srow[c] = v;
    local += v;
  }
  const float mean = block_sum(local, red) / cols;
  local = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = srow[c] - mean;
    local += d * d;
  }
  const float rstd = rsqrtf(block_sum(local, red) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = srow[c];
    if (sum_out) sum_out[base + c] = from_f<T>(v);
    norm_out[base + c] = from_f<T>((v - mean) * rstd * to_f(gamma[c]) + to_f(beta[c]));
  }
}

// One row held by one warp, 32 values per lane (column i * 32 + lane): LayerNorm in place
// (fp32 statistics, the sums in a fixed order), then rounded to T as it will be stored.
template <typename T>
__device__ __forceinline__ void warp_layernorm(float (&v)[32], int lane, int cols, float eps,
                                               const T* __restrict__ gamma,
                                               const T* __restrict__ beta) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 32; ++i)
    if (i * 32 + lane < cols) s += v[i];
  const float mean = warp_sum(s) / cols;
  float q = 0.f;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int c = i * 32 + lane;
    if (c < cols) { const float d = v[i] - mean; q += d * d; }
  }
  const float rstd = rsqrtf(warp_sum(q) / cols + eps);
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int c = i * 32 + lane;
    if (c < cols) v[i] = to_f(from_f<T>((v[i] - mean) * rstd * to_f(gamma[c]) + to_f(beta[c])));
  }
}

// s = x + alpha * delta (delta optional) into v, one warp per row; s rounded to T.
template <typename T>
__device__ __forceinline__ void warp_load_sum(float (&v)[32], size_t base, int lane, int cols,
                                              const T* __restrict__ x,
                                              const T* __restrict__ delta, float alpha) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int c = i * 32 + lane;
    v[i] = 0.f;
    if (c < cols) {
      float t = to_f(x[base + c]);
      if (delta) t += alpha * to_f(delta[base + c]);
      v[i] = t;
    }
  }
}

template <typename T>
__device__ __forceinline__ void warp_store(T* __restrict__ out, const float (&v)[32], size_t base,
                                           int lane, int cols) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int c = i * 32 + lane;
    if (c < cols) out[base + c] = from_f<T>(v[i]);
  }
}

// Same as add_layernorm_kernel, one warp per row (cols <= 1024): no shared memory, no
// block barriers.
template <typename T>
__global__ void add_layernorm_warp_kernel(T* __restrict__ sum_out, T* __restrict__ norm_out,
                                          const T* __restrict__ x, const T* __restrict__ delta,
                                          float alpha, const T* __restrict__ gamma,
                                          const T* __restrict__ beta, int rows, int cols, float eps) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const size_t base = (size_t)row * cols;
  float v[32];
  warp_load_sum(v, base, lane, cols, x, delta, alpha);
  if (sum_out) warp_store(sum_out, v, base, lane, cols);
  warp_layernorm(v, lane, cols, eps, gamma, beta);
  warp_store(norm_out, v, base, lane, cols);
}

// Vectorized warp-per-row forms: each lane moves 16-byte vectors (8 fp16/bf16 or 4 fp32
// values; vector i * 32 + lane of the row), MV vectors at most, so rows of up to
// 32 * MV * (16 / sizeof(T)) columns whose pointers are 16-byte aligned. The plain warp
// kernels above read 2-byte words and reached ~1.4 TB/s on the H200 at 32k x 256 fp16 rows.
template <typename T>
struct Vec16 {
  static constexpr int E = 16 / sizeof(T);
};

template <typename T, int MV>
__device__ __forceinline__ void vec_load(float (&v)[MV][Vec16<T>::E], const T* __restrict__ p,
                                         int lane, int nvec) {
  constexpr int E = Vec16<T>::E;
#pragma unroll
  for (int i = 0; i < MV; ++i) {
    const int j = i * 32 + lane;
    if (j < nvec) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[j];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int q = 0; q < E; ++q) v[i][q] = to_f(e[q]);
    } else {
#pragma unroll
      for (int q = 0; q < E; ++q) v[i][q] = 0.f;
    }
  }
}

template <typename T, int MV>
__device__ __forceinline__ void vec_store(T* __restrict__ p, const float (&v)[MV][Vec16<T>::E],
                                          int lane, int nvec) {
  constexpr int E = Vec16<T>::E;
#pragma unroll
  for (int i = 0; i < MV; ++i) {
    const int j = i * 32 + lane;
    if (j < nvec) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int q = 0; q < E; ++q) e[q] = from_f<T>(v[i][q]);
      reinterpret_cast<uint4*>(p)[j] = raw;
    }
  }
}

// LayerNorm in place over the row held in v (zeros past nvec vectors), rounded to T.
template <typename T, int MV>
__device__ __forceinline__ void vec_layernorm(float (&v)[MV][Vec16<T>::E], int lane, int nvec,
                                              int cols, float eps, const T* __restrict__ gamma,
                                              const T* __restrict__ beta) {
  constexpr int E = Vec16<T>::E;
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < MV; ++i)
#pragma unroll
    for (int q = 0; q < E; ++q) s += v[i][q];
  const float mean = warp_sum(s) / cols;
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < MV; ++i)
    if (i * 32 + lane < nvec)
#pragma unroll
      for (int q = 0; q < E; ++q) { const float d = v[i][q] - mean; ss += d * d; }
  const float rstd = rsqrtf(warp_sum(ss) / cols + eps);
  float g[MV][E], b[MV][E];
  vec_load<T, MV>(g, gamma, lane, nvec);
  vec_load<T, MV>(b, beta, lane, nvec);
#pragma unroll
  for (int i = 0; i < MV; ++i)
#pragma unroll
    for (int q = 0; q < E; ++q) v[i][q] = to_f(from_f<T>((v[i][q] - mean) * rstd * g[i][q] + b[i][q]));
}

// x + alpha * delta (delta optional) into v.
template <typename T, int MV>
__device__ __forceinline__ void vec_load_sum(float (&v)[MV][Vec16<T>::E], const T* __restrict__ x,
                                             const T* __restrict__ delta, float alpha, int lane,
                                             int nvec) {
  vec_load<T, MV>(v, x, lane, nvec);
  if (delta) {
    float d[MV][Vec16<T>::E];
    vec_load<T, MV>(d, delta, lane, nvec);
#pragma unroll
    for (int i = 0; i < MV; ++i)
#pragma unroll
      for (int q = 0; q < Vec16<T>::E; ++q) v[i][q] += alpha * d[i][q];
  }
}

// x + alpha * delta with delta = round_T(sum_s parts[s] + bias): a GEMM's output left in S
// fp32 split-K partials (parts + s * part_stride, rows of the same columns as x), summed,
// biased and rounded to T here as the GEMM's epilogue would (the split-K FFN down-projection
// for few rows, FastModel.ffn). parts == nullptr: plain vec_load_sum.
template <typename T, int MV>
__device__ __forceinline__ void vec_load_sum_parts(float (&v)[MV][Vec16<T>::E], const T* __restrict__ x,
                                                   const T* __restrict__ delta, const float* __restrict__ parts,
                                                   int S, size_t part_stride, const T* __restrict__ bias,
                                                   float alpha, int lane, int nvec) {
  if (parts == nullptr) {
    vec_load_sum<T, MV>(v, x, delta, alpha, lane, nvec);
    return;
  }
  constexpr int E = Vec16<T>::E;
  vec_load<T, MV>(v, x, lane, nvec);
  float b[MV][E];
  vec_load<T, MV>(b, bias, lane, nvec);
#pragma unroll
  for (int i = 0; i < MV; ++i) {
    const int j = i * 32 + lane;
    if (j >= nvec) continue;
    float d[E];
#pragma unroll
    for (int q = 0; q < E; ++q) d[q] = 0.f;
    for (int s = 0; s < S; ++s) {
      const float4* pp = reinterpret_cast<const float4*>(parts + s * part_stride) + j * (E / 4);
#pragma unroll
      for (int q4 = 0; q4 < E / 4; ++q4) {
        const float4 f = pp[q4];
        d[4 * q4] += f.x; d[4 * q4 + 1] += f.y; d[4 * q4 + 2] += f.z; d[4 * q4 + 3] += f.w;
      }
    }
#pragma unroll
    for (int q = 0; q < E; ++q) v[i][q] += alpha * to_f(from_f<T>(d[q] + b[i][q]));
  }
}

// add_layernorm_warp_kernel, vectorized.
template <typename T, int MV>
__global__ void add_layernorm_vec_kernel(T* __restrict__ sum_out, T* __restrict__ norm_out,
                                         const T* __restrict__ x, const T* __restrict__ delta,
                                         const float* __restrict__ parts, int S,
                                         const T* __restrict__ pbias, float alpha,
                                         const T* __restrict__ gamma, const T* __restrict__ beta,
                                         int rows, int cols, float eps) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const size_t base = (size_t)row * cols;
  const int nvec = cols / Vec16<T>::E;
  float v[MV][Vec16<T>::E];
  vec_load_sum_parts<T, MV>(v, x + base, delta ? delta + base : nullptr, parts ? parts + base : nullptr,
                            S, (size_t)rows * cols, pbias, alpha, lane, nvec);
  if (sum_out) vec_store<T, MV>(sum_out + base, v, lane, nvec);
  vec_layernorm<T, MV>(v, lane, nvec, cols, eps, gamma, beta);
  vec_store<T, MV>(norm_out + base, v, lane, nvec);
}

// A conformer layer's end and the next norm in one pass: out1 = LN1(x + alpha * delta)
// (norm_final: the layer's output), out2 = LN2(out1) (the next layer's first norm, or
// after_norm), LN2 reading out1 as stored (rounded to T), so both equal two
// add_layernorm launches bit for bit (which is what rows the vector form does not take get).
template <typename T, int MV>
__global__ void add_layernorm2_vec_kernel(T* __restrict__ out1, T* __restrict__ out2,
                                          const T* __restrict__ x, const T* __restrict__ delta,
                                          const float* __restrict__ parts, int S,
                                          const T* __restrict__ pbias, float alpha, const T* __restrict__ g1,
                                          const T* __restrict__ b1, float eps1,
                                          const T* __restrict__ g2, const T* __restrict__ b2,
                                          float eps2, int rows, int cols) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const size_t base = (size_t)row * cols;
  const int nvec = cols / Vec16<T>::E;
  float v[MV][Vec16<T>::E];
  vec_load_sum_parts<T, MV>(v, x + base, delta ? delta + base : nullptr, parts ? parts + base : nullptr,
                            S, (size_t)rows * cols, pbias, alpha, lane, nvec);
  vec_layernorm<T, MV>(v, lane, nvec, cols, eps1, g1, b1);
  vec_store<T, MV>(out1 + base, v, lane, nvec);
  vec_layernorm<T, MV>(v, lane, nvec, cols, eps2, g2, b2);
  vec_store<T, MV>(out2 + base, v, lane, nvec);
}

// Whether the vectorized kernels take these rows: 16-byte aligned pointers (null ones
// aside), whole vectors per row, at most 32 * MV vectors (MV = 4) per row.
static bool vec_ok(int cols, int elem_bytes, std::initializer_list<const void*> ptrs) {
  const int E = 16 / elem_bytes;
  if (cols % E != 0 || cols / E > 32 * 4) return false;
  for (const void* p : ptrs)
    if (p && (reinterpret_cast<uintptr_t>(p) & 15)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------
// Conformer conv module middle: GLU -> depthwise conv (BN folded into w/b) -> [LayerNorm]
// -> swish.  h: (B, T, 2C) = pointwise_conv1 output, time-major.  out: (B, T, C).
// Frames outside [0, len) are zero, except frames left of 0 in causal mode, which are
// glu(pointwise_conv1.bias) = pad_value (WeNet pads before pointwise_conv1).
// For each of TT rows, the sum of v[i] over the block; every thread gets the sums.
template <int TT>
__device__ __forceinline__ void tile_sums(const float (&v)[TT], float (&out)[TT], float (*red)[33]) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int i = 0; i < TT; ++i) {
    const float s = warp_sum(v[i]);
    if (lane == 0) red[i][wid] = s;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < TT; ++i) {
    float s = 0.f;
    for (int q = 0; q < nw; ++q) s += red[i][q];
    out[i] = s;
  }
  __syncthreads();  // red is reused by the next call
}

// Time-tiled: a block computes TT output frames for all channels (one thread per channel,
// C <= 1024); each GLU value is computed once into shared memory.
template <typename T, int TT>
__global__ void glu_dwconv_tiled_kernel(T* __restrict__ out, const T* __restrict__ h,
                                        const int32_t* __restrict__ lens, const float* __restrict__ w,
                                        const float* __restrict__ bias, const float* __restrict__ pad_value,
                                        const float* __restrict__ ln_gamma, const float* __restrict__ ln_beta,
                                        int T_, int C, int K, int causal, float eps) {
  extern __shared__ float g[];  // (TT + K - 1) x C
  __shared__ float red[TT][33];
  const int t0 = blockIdx.x * TT, b = blockIdx.y, c = threadIdx.x;
  const int len = lens[b];
  const int P = causal ? K - 1 : (K - 1) / 2;
  const int rows = TT + K - 1;
  const T* hb = h + (size_t)b * T_ * 2 * C;
  if (c < C) {
    for (int r = 0; r < rows; ++r) {
      const int tt = t0 - P + r;
      float v;
      if (tt >= 0 && tt < len) {
        const float a = to_f(hb[(size_t)tt * 2 * C + c]);
        const float gate = to_f(hb[(size_t)tt * 2 * C + C + c]);
        v = a / (1.f + __expf(-gate));
      } else {
        v = (tt < 0 && causal) ? pad_value[c] : 0.f;
      }
      g[r * C + c] = v;
    }
  }
  __syncthreads();
  float acc[TT];
  const float bc = c < C ? bias[c] : 0.f;
#pragma unroll
  for (int i = 0; i < TT; ++i) acc[i] = bc;
  if (c < C) {
    for (int k = 0; k < K; ++k) {
      const float wk = w[c * K + k];
#pragma unroll
      for (int i = 0; i < TT; ++i) acc[i] += wk * g[(i + k) * C + c];
    }
  }
  float mean[TT], rstd[TT], tmp[TT];
  if (ln_gamma) {  // LayerNorm over channels, per frame: two block-wide sums
#pragma unroll
    for (int i = 0; i < TT; ++i) tmp[i] = c < C ? acc[i] : 0.f;
    tile_sums<TT>(tmp, mean, red);
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      mean[i] /= C;
      const float d = c < C ? acc[i] - mean[i] : 0.f;
      tmp[i] = d * d;
    }
    tile_sums<TT>(tmp, rstd, red);
#pragma unroll
    for (int i = 0; i < TT; ++i) rstd[i] = rsqrtf(rstd[i] / C + eps);
  }
  if (c < C) {
    const float lg = ln_gamma ? ln_gamma[c] : 1.f, lb = ln_gamma ? ln_beta[c] : 0.f;
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      const int t = t0 + i;
      if (t >= T_) break;
      float v = acc[i];
      if (ln_gamma) v = (v - mean[i]) * rstd[i] * lg + lb;
      out[((size_t)b * T_ + t) * C + c] = from_f<T>(v / (1.f + __expf(-v)));
    }
  }
}

// The same with two neighbouring channels per thread (16-bit types, C even): 2-element loads
// and stores (a warp reads 128 bytes of a row, not 64) and half the threads per block. The
// conv sums are the same sums in the same order as above; the LayerNorm's block sums add a
// thread's pair first, so they round differently from the one-channel kernel's, but the order
// is the same for every TT and batch (a frame's output does not depend on its batch).
template <typename T> struct Pair;
template <> struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to(type v) { return __half22float2(v); }
  static __device__ __forceinline__ type from(float2 v) { return __float22half2_rn(v); }
};
template <> struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ type from(float2 v) { return __float22bfloat162_rn(v); }
};

template <typename T, int TT>
__global__ void glu_dwconv_pair_kernel(T* __restrict__ out, const T* __restrict__ h,
                                       const int32_t* __restrict__ lens, const float* __restrict__ w,
                                       const float* __restrict__ bias, const float* __restrict__ pad_value,
                                       const float* __restrict__ ln_gamma, const float* __restrict__ ln_beta,
                                       int T_, int C, int K, int causal, float eps) {
  using P2 = Pair<T>;
  using T2 = typename P2::type;
  extern __shared__ float g[];  // (TT + K - 1) x C
  __shared__ float red[TT][33];
  const int t0 = blockIdx.x * TT, b = blockIdx.y, c = 2 * threadIdx.x;  // channels c, c + 1
  const bool on = c < C;
  const int len = lens[b];
  const int P = causal ? K - 1 : (K - 1) / 2;
  const int rows = TT + K - 1;
  const T* hb = h + (size_t)b * T_ * 2 * C;
  if (on) {
    // U rows' loads in flight at once (a loop of one load per row waits out the memory
    // latency once per row: the whole cost of a small batch)
    constexpr int U = 8;
    for (int r0 = 0; r0 < rows; r0 += U) {
      T2 av[U], gv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int tt = t0 - P + r0 + u;
        if (r0 + u < rows && tt >= 0 && tt < len) {
          av[u] = *reinterpret_cast<const T2*>(hb + (size_t)tt * 2 * C + c);
          gv[u] = *reinterpret_cast<const T2*>(hb + (size_t)tt * 2 * C + C + c);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int r = r0 + u, tt = t0 - P + r;
        if (r >= rows) break;
        float2 v;
        if (tt >= 0 && tt < len) {
          const float2 a = P2::to(av[u]), gate = P2::to(gv[u]);
          v.x = a.x / (1.f + __expf(-gate.x));
          v.y = a.y / (1.f + __expf(-gate.y));
        } else if (tt < 0 && causal) {
          v.x = pad_value[c];
          v.y = pad_value[c + 1];
        } else {
          v.x = v.y = 0.f;
        }
        *reinterpret_cast<float2*>(g + r * C + c) = v;
      }
    }
  }
  __syncthreads();
  float acc0[TT], acc1[TT];
  const float b0 = on ? bias[c] : 0.f, b1 = on ? bias[c + 1] : 0.f;
#pragma unroll
  for (int i = 0; i < TT; ++i) { acc0[i] = b0; acc1[i] = b1; }
  if (on) {
    for (int k = 0; k < K; ++k) {
      const float w0 = w[c * K + k], w1 = w[(c + 1) * K + k];
#pragma unroll
      for (int i = 0; i < TT; ++i) {
        const float2 gv = *reinterpret_cast<const float2*>(g + (i + k) * C + c);
        acc0[i] += w0 * gv.x;
        acc1[i] += w1 * gv.y;
      }
    }
  }
  float mean[TT], rstd[TT], tmp[TT];
  if (ln_gamma) {
#pragma unroll
    for (int i = 0; i < TT; ++i) tmp[i] = on ? acc0[i] + acc1[i] : 0.f;
    tile_sums<TT>(tmp, mean, red);
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      mean[i] /= C;
      const float d0 = acc0[i] - mean[i], d1 = acc1[i] - mean[i];
      tmp[i] = on ? d0 * d0 + d1 * d1 : 0.f;
    }
    tile_sums<TT>(tmp, rstd, red);
#pragma unroll
    for (int i = 0; i < TT; ++i) rstd[i] = rsqrtf(rstd[i] / C + eps);
  }
  if (on) {
    const float g0 = ln_gamma ? ln_gamma[c] : 1.f, g1 = ln_gamma ? ln_gamma[c + 1] : 1.f;
    const float e0 = ln_gamma ? ln_beta[c] : 0.f, e1 = ln_gamma ? ln_beta[c + 1] : 0.f;
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      const int t = t0 + i;
      if (t >= T_) break;
      float2 v = make_float2(acc0[i], acc1[i]);
      if (ln_gamma) {
        v.x = (v.x - mean[i]) * rstd[i] * g0 + e0;
        v.y = (v.y - mean[i]) * rstd[i] * g1 + e1;
      }
      v.x = v.x / (1.f + __expf(-v.x));
      v.y = v.y / (1.f + __expf(-v.y));
      *reinterpret_cast<T2*>(out + ((size_t)b * T_ + t) * C + c) = P2::from(v);
    }
  }
}

// Rel-pos attention keys: out (rows = B*T, h, 2*dk) holds per head [k, p]: k from the QKV
// GEMM's output (row r at k + r*ld_k, head j at column j*dk), p from this layer's linear_pos
// of the positional rows (row t = r % T at p + t*ld_p, shared by the batch). Copies of V
// (16 bytes where everything is aligned to it; dk, ld_k and ld_p are counted in V units).
template <typename V>
__global__ void pack_rel_keys_kernel(V* __restrict__ out, const V* __restrict__ k,
                                     const V* __restrict__ p, long long n, int T_, int h, int dk,
                                     long long ld_k, long long ld_p) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const int e = (int)(i % dk);
    long long r = i / dk;
    const int part = (int)(r & 1);
    r >>= 1;
    const int j = (int)(r % h);
    r /= h;
    out[i] = part == 0 ? k[r * ld_k + (long long)j * dk + e]
                       : p[(r % T_) * ld_p + (long long)j * dk + e];
  }
}

// Row-wise log-softmax (fp32 out, optional) + top-k (values fp32, indices int64), k <= KM.
// WPR warps per row (1 for many rows, 4 for few), one pass over it: each lane keeps its
// running max and sum of exp(v - max) (rescaled when the max grows) and an unsorted list of
// its KM best (value, column), the slot to replace next being the smallest (ties: the later
// column). Each warp merges its lanes' lists in k rounds of shuffles; with WPR > 1 the row's
// first warp merges the warps' k-lists the same way. Ties go to the lower column. (A block
// per row with a sorted list ran at ~0.5 TB/s on an H200: its insertions, a dependent chain
// of KM steps, bound it.)
template <int N>
__device__ __forceinline__ void topk_best(const float (&lv)[N], const int (&li)[N], float& bv,
                                          int& bi, int& bj) {
  bv = lv[0]; bi = li[0]; bj = 0;
#pragma unroll
  for (int j = 1; j < N; ++j)
    if (lv[j] > bv || (lv[j] == bv && li[j] < bi)) { bv = lv[j]; bi = li[j]; bj = j; }
}

// k rounds: the warp's best (value, column) each round -> lane 0's out(r, v, i); the owner
// pops it (columns are unique across the warp).
template <int N, typename Out>
__device__ __forceinline__ void topk_warp_merge(float (&lv)[N], int (&li)[N], int k, Out out) {
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < k; ++r) {
    float bv;
    int bi, bj;
    topk_best<N>(lv, li, bv, bi, bj);
    const int mine = bi;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) out(r, bv, bi);
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (j == bj && mine == bi) { lv[j] = -INFINITY; li[j] = 0x7fffffff; }
  }
}

template <typename T, int KM, int WPR>
__global__ void __launch_bounds__(256) log_softmax_topk_warp_kernel(
    float* __restrict__ logp, float* __restrict__ topv, int64_t* __restrict__ topi,
    const T* __restrict__ x, int rows, int V, int k, int ld) {
  constexpr int LOADS = 4, RPB = 8 / WPR, CM = (WPR * KM + 31) / 32;
  __shared__ float s_m[8], s_s[8], s_v[WPR > 1 ? 8 : 1][KM];
  __shared__ int s_i[WPR > 1 ? 8 : 1][KM];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, sub = w % WPR;
  const int row = blockIdx.x * RPB + w / WPR;
  const bool active = row < rows;  // no early return: WPR > 1 meets at __syncthreads
  const T* xr = x + (size_t)(active ? row : 0) * ld;
  float lv[KM];
  int li[KM];
#pragma unroll
  for (int j = 0; j < KM; ++j) { lv[j] = -INFINITY; li[j] = 0x7fffffff; }
  float minv = -INFINITY;
  int minj = 0;
  float tm = -INFINITY, ts = 0.f;  // this lane's max and sum of exp(v - tm)
  const int stride = 32 * WPR;
  for (int c0 = sub * 32 + lane; active && c0 < V; c0 += LOADS * stride) {
    float vs[LOADS];
#pragma unroll
    for (int u = 0; u < LOADS; ++u) {
      const int c = c0 + u * stride;
      vs[u] = c < V ? to_f(xr[c]) : -INFINITY;
    }
#pragma unroll
    for (int u = 0; u < LOADS; ++u) {  // this lane's columns in increasing order
      const int c = c0 + u * stride;
      const float v = vs[u];
      if (c >= V) break;
      if (v > tm) {
        ts = ts * __expf(tm - v) + 1.f;
        tm = v;
      } else if (v > -INFINITY) {  // (-inf - -inf would be NaN)
        ts += __expf(v - tm);
      }
      if (v > minv) {  // strict: an equal later column never displaces an earlier one
#pragma unroll
        for (int j = 0; j < KM; ++j)
          if (j == minj) { lv[j] = v; li[j] = c; }
        minv = lv[0]; minj = 0;  // the slot to replace next
        int mini = li[0];
#pragma unroll
        for (int j = 1; j < KM; ++j)
          if (lv[j] < minv || (lv[j] == minv && li[j] > mini)) { minv = lv[j]; minj = j; mini = li[j]; }
      }
    }
  }
  float m = warp_reduce<MaxOp>(tm);
  float sum = warp_sum(tm == -INFINITY ? 0.f : ts * __expf(tm - m));
  if (WPR == 1) {
    if (!active) return;
    const float lse = m + logf(sum);
    topk_warp_merge<KM>(lv, li, k, [&](int r, float v, int i) {
      topv[(size_t)row * k + r] = v - lse;
      topi[(size_t)row * k + r] = i;
    });
    if (logp)
      for (int c = lane; c < V; c += 32) logp[(size_t)row * V + c] = to_f(xr[c]) - lse;
    return;
  }
  topk_warp_merge<KM>(lv, li, k, [&](int r, float v, int i) { s_v[w][r] = v; s_i[w][r] = i; });
  if (lane == 0) { s_m[w] = m; s_s[w] = sum; }
  __syncthreads();
  if (!active) return;
  const int w0 = w - sub;  // the row's first warp
  m = s_m[w0];
#pragma unroll
  for (int q = 1; q < WPR; ++q) m = fmaxf(m, s_m[w0 + q]);
  sum = 0.f;
#pragma unroll
  for (int q = 0; q < WPR; ++q)
    if (s_m[w0 + q] > -INFINITY) sum += s_s[w0 + q] * __expf(s_m[w0 + q] - m);
  const float lse = m + logf(sum);
  if (logp)
    for (int c = sub * 32 + lane; c < V; c += stride) logp[(size_t)row * V + c] = to_f(xr[c]) - lse;
  if (sub) return;
  float cv[CM];
  int ci[CM];
#pragma unroll
  for (int t = 0; t < CM; ++t) {  // candidate e = (warp q, rank r) of the WPR k-lists
    const int e = lane + 32 * t, q = e / KM, r = e % KM;
    const bool ok = q < WPR && r < k;
    cv[t] = ok ? s_v[w0 + q][r] : -INFINITY;
    ci[t] = ok ? s_i[w0 + q][r] : 0x7fffffff;
  }
  topk_warp_merge<CM>(cv, ci, k, [&](int r, float v, int i) {
    topv[(size_t)row * k + r] = v - lse;
    topi[(size_t)row * k + r] = i;
  });
}

// ---------------------------------------------------------------------------------------
// Decoder scoring: out[n, l] = log_softmax(x[n, l, :])[target[n, l]] for l < len[n], else 0.
template <typename T>
__global__ void log_softmax_gather_kernel(float* __restrict__ out, const T* __restrict__ x,
                                          const int64_t* __restrict__ target,
                                          const int32_t* __restrict__ lens, int L, int V, int ld) {
  __shared__ float red[32];
  const int row = blockIdx.x, n = row / L, l = row % L;
  if (l >= lens[n]) {
    if (threadIdx.x == 0) out[row] = 0.f;
    return;
  }
  const size_t base = (size_t)row * ld;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, to_f(x[base + c]));
  m = block_max(m, red);
  float s = 0.f;
  for (int c = threadIdx.x; c < V; c += blockDim.x) s += __expf(to_f(x[base + c]) - m);
  s = block_sum(s, red);
  if (threadIdx.x == 0) {
    int64_t tgt = target[row];
    tgt = tgt < 0 ? 0 : (tgt >= V ? V - 1 : tgt);
    out[row] = to_f(x[base + tgt]) - (m + logf(s));
  }
}



// ---------------------------------------------------------------------------------------
// Attention with an optional relative-position term (WeNet's RelPositionMultiHeadedAttention):
//   out = softmax(((q+u) k^T + [(q+v) p^T]) * scale + bias) v
// qu, qv, out: (B, H, Tq, dk); v: (B, H, Tk, dk); k, p: (Kb|Pb, H, Tk, dk) with Kb, Pb 1 or B;
// bias (additive mask): (Bb, Hb, Qb, Tk) with each of Bb/Hb/Qb 1 or full. One warp per query
// row, online softmax in fp32 over the keys; lane l holds elements l, l+32, ... (R of them).
// A key whose score is -inf (an fp16 mask bias) gets weight 0; a row with no key left gets 0.
template <typename T, int R>
__global__ void attention_kernel(T* __restrict__ out, const T* __restrict__ qu,
                                 const T* __restrict__ k, const T* __restrict__ v,
                                 const T* __restrict__ qv, const T* __restrict__ p,
                                 const T* __restrict__ bias, int H, int Tq, int Tk, int dk,
                                 int k_batch, int p_batch, int bias_b, int bias_h, int bias_q,
                                 float scale) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  if (row >= Tq) return;
  const size_t q_off = ((size_t)bh * Tq + row) * dk;
  const T* kb = k + ((size_t)(k_batch == 1 ? 0 : b) * H + h) * Tk * dk;
  const T* vb = v + (size_t)bh * Tk * dk;
  const T* pb = p == nullptr ? nullptr : p + ((size_t)(p_batch == 1 ? 0 : b) * H + h) * Tk * dk;
  const T* brow = bias == nullptr ? nullptr
      : bias + (((size_t)(bias_b == 1 ? 0 : b) * bias_h + (bias_h == 1 ? 0 : h)) * bias_q +
                (bias_q == 1 ? 0 : row)) * Tk;
  float a[R], c[R], acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane + 32 * r;
    a[r] = e < dk ? to_f(qu[q_off + e]) : 0.f;
    c[r] = (pb != nullptr && e < dk) ? to_f(qv[q_off + e]) : 0.f;
    acc[r] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j < Tk; ++j) {
    const size_t o = (size_t)j * dk;
    float s = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int e = lane + 32 * r;
      if (e < dk) {
        s += a[r] * to_f(kb[o + e]);
        if (pb != nullptr) s += c[r] * to_f(pb[o + e]);
      }
    }
    s = warp_sum(s) * scale + (brow != nullptr ? to_f(brow[j]) : 0.f);
    if (s == -INFINITY) continue;  // same in every lane: the warp stays converged
    const float mn = fmaxf(m, s);
    const float corr = m == -INFINITY ? 0.f : __expf(m - mn);
    const float w = __expf(s - mn);
    l = l * corr + w;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int e = lane + 32 * r;
      acc[r] = acc[r] * corr + (e < dk ? w * to_f(vb[o + e]) : 0.f);
    }
    m = mn;
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = lane + 32 * r;
    if (e < dk) out[q_off + e] = from_f<T>(acc[r] * inv);
  }
}

}  // namespace

#define DISPATCH(dtype, ...)                                        \
  switch (dtype) {                                                  \
    case 0: { using T = float; __VA_ARGS__; break; }                \
    case 1: { using T = __half; __VA_ARGS__; break; }               \
    case 2: { using T = __nv_bfloat16; __VA_ARGS__; break; }        \
    default: return (int)cudaErrorInvalidValue;                     \
  }

template <int TT>
static int glu_dwconv_launch(void* out, const void* h, const int32_t* lens, const float* w,
                             const float* bias, const float* pad_value, const float* ln_gamma,
                             const float* ln_beta, int B, int T_, int C, int K, int causal,
                             float eps, int dtype, cudaStream_t stream) {
  const size_t smem = (size_t)(TT + K - 1) * C * sizeof(float);
  dim3 grid((T_ + TT - 1) / TT, B);
  const int threads = ((C + 31) / 32) * 32;
  DISPATCH(dtype, {
    auto kernel = glu_dwconv_tiled_kernel<T, TT>;
    static size_t smem_allowed = 48 * 1024;  // per dtype and TT; raised once, outside graph replays
    if (smem > smem_allowed) {  // large C*K: opt in to more dynamic shared memory
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      if (e != cudaSuccess) return (int)e;
      smem_allowed = smem;
    }
    kernel<<<grid, threads, smem, stream>>>((T*)out, (const T*)h, lens, w, bias, pad_value,
                                            ln_gamma, ln_beta, T_, C, K, causal, eps);
  });
  return (int)cudaGetLastError();
}

template <typename T, int TT>
static int glu_dwconv_pair_launch_t(void* out, const void* h, const int32_t* lens, const float* w,
                                    const float* bias, const float* pad_value, const float* ln_gamma,
                                    const float* ln_beta, int B, int T_, int C, int K, int causal,
                                    float eps, cudaStream_t stream) {
  const size_t smem = (size_t)(TT + K - 1) * C * sizeof(float);
  dim3 grid((T_ + TT - 1) / TT, B);
  const int threads = ((C / 2 + 31) / 32) * 32;
  auto kernel = glu_dwconv_pair_kernel<T, TT>;
  static size_t smem_allowed = 48 * 1024;  // per dtype and TT; raised once, outside graph replays
  if (smem > smem_allowed) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    smem_allowed = smem;
  }
  kernel<<<grid, threads, smem, stream>>>((T*)out, (const T*)h, lens, w, bias, pad_value, ln_gamma,
                                          ln_beta, T_, C, K, causal, eps);
  return (int)cudaGetLastError();
}

template <int TT>
static int glu_dwconv_pair_launch(void* out, const void* h, const int32_t* lens, const float* w,
                                  const float* bias, const float* pad_value, const float* ln_gamma,
                                  const float* ln_beta, int B, int T_, int C, int K, int causal,
                                  float eps, int dtype, cudaStream_t stream) {
  if (dtype == 1)
    return glu_dwconv_pair_launch_t<__half, TT>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta,
                                                B, T_, C, K, causal, eps, stream);
  if (dtype == 2)
    return glu_dwconv_pair_launch_t<__nv_bfloat16, TT>(out, h, lens, w, bias, pad_value, ln_gamma,
                                                       ln_beta, B, T_, C, K, causal, eps, stream);
  return (int)cudaErrorInvalidValue;
}

// The vector add + LayerNorm kernels hold a row in registers, MV 16-byte vectors per lane:
// launch them with the fewest vectors that cover the row (a d-256 fp16 row: one), since
// registers for four (the only form before) cut the warps an SM keeps in flight on short rows.
// -DWK_VEC_MV4 builds that first form (A/B runs).
#ifdef WK_VEC_MV4
#define VEC_MV(nvec, LAUNCH) { constexpr int MV = 4; LAUNCH; }
#else
#define VEC_MV(nvec, LAUNCH)                                        \
  if ((nvec) <= 32) { constexpr int MV = 1; LAUNCH; }               \
  else if ((nvec) <= 64) { constexpr int MV = 2; LAUNCH; }          \
  else { constexpr int MV = 4; LAUNCH; }
#endif

extern "C" {

int wk_version() { return 8; }

int wk_add_layernorm(void* sum_out, void* norm_out, const void* x, const void* delta,
                     float alpha, const void* gamma, const void* beta, int rows, int cols,
                     float eps, int dtype, cudaStream_t stream) {
  if (rows <= 0) return 0;
  const int rows_per_block = 4;
  const int blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (vec_ok(cols, dtype == 0 ? 4 : 2, {sum_out, norm_out, x, delta, gamma, beta})) {
    DISPATCH(dtype, VEC_MV(cols / Vec16<T>::E, (add_layernorm_vec_kernel<T, MV><<<blocks, 32 * rows_per_block, 0, stream>>>(
        (T*)sum_out, (T*)norm_out, (const T*)x, (const T*)delta, nullptr, 0, nullptr, alpha, (const T*)gamma,
        (const T*)beta, rows, cols, eps))));
    return (int)cudaGetLastError();
  }
  if (cols <= 1024) {
    DISPATCH(dtype, add_layernorm_warp_kernel<T><<<(rows + rows_per_block - 1) / rows_per_block,
                                                     32 * rows_per_block, 0, stream>>>(
        (T*)sum_out, (T*)norm_out, (const T*)x, (const T*)delta, alpha, (const T*)gamma,
        (const T*)beta, rows, cols, eps));
    return (int)cudaGetLastError();
  }
  const size_t smem = (size_t)cols * sizeof(float);
  DISPATCH(dtype, add_layernorm_kernel<T><<<rows, 256, smem, stream>>>(
      (T*)sum_out, (T*)norm_out, (const T*)x, (const T*)delta, alpha, (const T*)gamma,
      (const T*)beta, cols, eps));
  return (int)cudaGetLastError();
}

int wk_add_layernorm2(void* out1, void* out2, const void* x, const void* delta, float alpha,
                      const void* g1, const void* b1, float eps1, const void* g2, const void* b2,
                      float eps2, int rows, int cols, int dtype, cudaStream_t stream) {
  if (rows <= 0) return 0;
  if (!vec_ok(cols, dtype == 0 ? 4 : 2, {out1, out2, x, delta, g1, b1, g2, b2})) {
    const int e = wk_add_layernorm(nullptr, out1, x, delta, alpha, g1, b1, rows, cols, eps1, dtype,
                                   stream);
    if (e) return e;
    return wk_add_layernorm(nullptr, out2, out1, nullptr, 0.f, g2, b2, rows, cols, eps2, dtype,
                            stream);
  }
  const int rows_per_block = 4;
  DISPATCH(dtype, VEC_MV(cols / Vec16<T>::E, (add_layernorm2_vec_kernel<T, MV><<<(rows + rows_per_block - 1) / rows_per_block,
                                                     32 * rows_per_block, 0, stream>>>(
      (T*)out1, (T*)out2, (const T*)x, (const T*)delta, nullptr, 0, nullptr, alpha, (const T*)g1,
      (const T*)b1, eps1, (const T*)g2, (const T*)b2, eps2, rows, cols))));
  return (int)cudaGetLastError();
}

// The two above with delta given as S fp32 split-K partials [S, rows, cols] + bias [cols]
// (vector rows only: 16-byte aligned, cols a multiple of 8 and at most 32 * 4 vectors).
static bool parts_ok(int S, int rows, int cols, int dtype, std::initializer_list<const void*> ptrs) {
  return S >= 1 && cols % 8 == 0 && vec_ok(cols, dtype == 0 ? 4 : 2, ptrs) && rows > 0;
}

int wk_add_layernorm_parts(void* sum_out, void* norm_out, const void* x, const float* parts, int S,
                           const void* bias, float alpha, const void* gamma, const void* beta,
                           int rows, int cols, float eps, int dtype, cudaStream_t stream) {
  if (rows <= 0) return 0;
  if (!parts_ok(S, rows, cols, dtype, {sum_out, norm_out, x, parts, bias, gamma, beta}))
    return (int)cudaErrorInvalidValue;
  const int rows_per_block = 4;
  DISPATCH(dtype, VEC_MV(cols / Vec16<T>::E, (add_layernorm_vec_kernel<T, MV><<<(rows + rows_per_block - 1) / rows_per_block,
                                                    32 * rows_per_block, 0, stream>>>(
      (T*)sum_out, (T*)norm_out, (const T*)x, nullptr, parts, S, (const T*)bias, alpha,
      (const T*)gamma, (const T*)beta, rows, cols, eps))));
  return (int)cudaGetLastError();
}

int wk_add_layernorm2_parts(void* out1, void* out2, const void* x, const float* parts, int S,
                            const void* bias, float alpha, const void* g1, const void* b1, float eps1,
                            const void* g2, const void* b2, float eps2, int rows, int cols, int dtype,
                            cudaStream_t stream) {
  if (rows <= 0) return 0;
  if (!parts_ok(S, rows, cols, dtype, {out1, out2, x, parts, bias, g1, b1, g2, b2}))
    return (int)cudaErrorInvalidValue;
  const int rows_per_block = 4;
  DISPATCH(dtype, VEC_MV(cols / Vec16<T>::E, (add_layernorm2_vec_kernel<T, MV><<<(rows + rows_per_block - 1) / rows_per_block,
                                                     32 * rows_per_block, 0, stream>>>(
      (T*)out1, (T*)out2, (const T*)x, nullptr, parts, S, (const T*)bias, alpha, (const T*)g1,
      (const T*)b1, eps1, (const T*)g2, (const T*)b2, eps2, rows, cols))));
  return (int)cudaGetLastError();
}

int wk_glu_dwconv(void* out, const void* h, const int32_t* lens, const float* w,
                  const float* bias, const float* pad_value, const float* ln_gamma,
                  const float* ln_beta, int B, int T_, int C, int K, int causal, float eps,
                  int dtype, cudaStream_t stream) {
  if (B <= 0 || T_ <= 0) return 0;
  if (C > 2048 || (C > 1024 && (dtype == 0 || C % 2))) return (int)cudaErrorInvalidValue;
  // 16-bit activations, C even: two channels per thread. 16 frames per block re-read K - 1
  // neighbours per 16 outputs (8: per 8); small batches take fewer frames per block so the
  // blocks fill the GPU. Every output is the same sum in the same order whatever TT is.
  if (dtype != 0 && C % 2 == 0 && !(reinterpret_cast<uintptr_t>(h) & 3) &&
      !(reinterpret_cast<uintptr_t>(out) & 3)) {
    if ((long long)B * ((T_ + 15) / 16) >= 512)
      return glu_dwconv_pair_launch<16>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C,
                                        K, causal, eps, dtype, stream);
    if ((long long)B * ((T_ + 7) / 8) >= 256)
      return glu_dwconv_pair_launch<8>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C,
                                       K, causal, eps, dtype, stream);
    if ((long long)B * ((T_ + 3) / 4) >= 256)
      return glu_dwconv_pair_launch<4>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C,
                                       K, causal, eps, dtype, stream);
    return glu_dwconv_pair_launch<2>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C, K,
                                     causal, eps, dtype, stream);
  }
  if (C > 1024) return (int)cudaErrorInvalidValue;
  // one channel per thread: 8 frames per block re-read K - 1 neighbours per 8 outputs; a small batch (one short
  // utterance, a chunk) makes too few blocks of 8 to fill the GPU, so fewer frames per block
  // there. Every output is the same sum in the same order whatever TT is.
  if ((long long)B * ((T_ + 7) / 8) >= 256)
    return glu_dwconv_launch<8>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C, K,
                                causal, eps, dtype, stream);
  if ((long long)B * ((T_ + 3) / 4) >= 256)
    return glu_dwconv_launch<4>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C, K,
                                causal, eps, dtype, stream);
  return glu_dwconv_launch<2>(out, h, lens, w, bias, pad_value, ln_gamma, ln_beta, B, T_, C, K,
                              causal, eps, dtype, stream);
}

int wk_pack_rel_keys(void* out, const void* k, const void* p, int B, int T_, int h, int dk,
                     long long ld_k, long long ld_p, int dtype, cudaStream_t stream) {
  if (B <= 0 || T_ <= 0) return 0;
  const int es = dtype == 0 ? 4 : 2;
  const int threads = 256;
  const long long elems = (long long)B * T_ * h * 2 * dk;
  if ((dk * es) % 16 == 0 && (ld_k * es) % 16 == 0 && (ld_p * es) % 16 == 0 &&
      !((reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(k) |
         reinterpret_cast<uintptr_t>(p)) & 15)) {
    const int per = 16 / es;
    const long long n = elems / per;
    const int blocks = (int)std::min<long long>((n + threads - 1) / threads, 65535LL * 8);
    pack_rel_keys_kernel<uint4><<<blocks, threads, 0, stream>>>(
        (uint4*)out, (const uint4*)k, (const uint4*)p, n, T_, h, dk / per, ld_k / per, ld_p / per);
  } else {
    const int blocks = (int)std::min<long long>((elems + threads - 1) / threads, 65535LL * 8);
    if (es == 4)
      pack_rel_keys_kernel<uint32_t><<<blocks, threads, 0, stream>>>(
          (uint32_t*)out, (const uint32_t*)k, (const uint32_t*)p, elems, T_, h, dk, ld_k, ld_p);
    else
      pack_rel_keys_kernel<uint16_t><<<blocks, threads, 0, stream>>>(
          (uint16_t*)out, (const uint16_t*)k, (const uint16_t*)p, elems, T_, h, dk, ld_k, ld_p);
  }
  return (int)cudaGetLastError();
}

int wk_log_softmax_topk(float* logp, float* topv, int64_t* topi, const void* x, int rows,
                        int V, int ld, int k, int dtype, cudaStream_t stream) {
  if (ld < V) return (int)cudaErrorInvalidValue;
  if (rows <= 0) return 0;
  if (k < 1 || k > 32 || k > V) return (int)cudaErrorInvalidValue;
  // many rows: a warp each; few: 4 warps each (H200, V 4233: 1,000 rows 78 vs 88 us with a
  // warp each, 4,000 rows 126 vs 108 us, 250 rows 20 vs 53 us)
  const bool few = rows < 2048;
  const unsigned blocks = (unsigned)(few ? (rows + 1) / 2 : (rows + 7) / 8);
#define WK_TOPK(KM)                                                                              \
  do {                                                                                           \
    if (few) {                                                                                   \
      DISPATCH(dtype, (log_softmax_topk_warp_kernel<T, KM, 4><<<blocks, 256, 0, stream>>>(     \
          logp, topv, topi, (const T*)x, rows, V, k, ld)));                                      \
    } else {                                                                                     \
      DISPATCH(dtype, (log_softmax_topk_warp_kernel<T, KM, 1><<<blocks, 256, 0, stream>>>(     \
          logp, topv, topi, (const T*)x, rows, V, k, ld)));                                      \
    }                                                                                            \
  } while (0)
  if (k <= 4) {
    WK_TOPK(4);
  } else if (k <= 8) {
    WK_TOPK(8);
  } else if (k <= 10) {
    WK_TOPK(10);
  } else if (k <= 16) {
    WK_TOPK(16);
  } else if (k <= 20) {
    WK_TOPK(20);
  } else {
    WK_TOPK(32);
  }
#undef WK_TOPK
  return (int)cudaGetLastError();
}

int wk_log_softmax_gather(float* out, const void* x, const int64_t* target,
                          const int32_t* lens, int N, int L, int V, int ld, int dtype,
                          cudaStream_t stream) {
  if (N <= 0 || L <= 0) return 0;
  if (ld < V) return (int)cudaErrorInvalidValue;
  DISPATCH(dtype, log_softmax_gather_kernel<T><<<N * L, 256, 0, stream>>>(out, (const T*)x,
                                                                          target, lens, L, V, ld));
  return (int)cudaGetLastError();
}

int wk_attention(void* out, const void* qu, const void* k, const void* v, const void* qv,
                 const void* p, const void* bias, int B, int H, int Tq, int Tk, int dk,
                 int k_batch, int p_batch, int bias_b, int bias_h, int bias_q, float scale,
                 int dtype, cudaStream_t stream) {
  if (B <= 0 || H <= 0 || Tq <= 0) return 0;
  if (Tk <= 0 || dk <= 0 || dk > 128 || (p != nullptr && qv == nullptr)) return (int)cudaErrorInvalidValue;
  if ((long long)B * H > 65535) return (int)cudaErrorInvalidValue;
  constexpr int kWarps = 4;
  dim3 grid((Tq + kWarps - 1) / kWarps, B * H);
#define WK_ATTN(R) attention_kernel<T, R><<<grid, 32 * kWarps, 0, stream>>>(                 \
      (T*)out, (const T*)qu, (const T*)k, (const T*)v, (const T*)qv, (const T*)p,          \
      (const T*)bias, H, Tq, Tk, dk, k_batch, p_batch, bias_b, bias_h, bias_q, scale)
  DISPATCH(dtype, {
    if (dk <= 32) WK_ATTN(1);
    else if (dk <= 64) WK_ATTN(2);
    else if (dk <= 96) WK_ATTN(3);
    else WK_ATTN(4);
  });
#undef WK_ATTN
  return (int)cudaGetLastError();
}

}  // extern "C"
