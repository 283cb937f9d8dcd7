// C launchers of the fused CUDA kernels in wenet_kernels.cu: the one declaration shared by
// the torch custom ops (bound through ctypes, wenet_triton/engines/kernels.py) and the
// TensorRT plugins (wenet_trt_plugins.cpp). Activations are float32 / float16 / bfloat16
// (dtype 0 / 1 / 2); each launcher returns a cudaError_t value (0 = success).
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Version of this interface; bumped whenever a signature changes (kernels.py checks it).
int wk_version();

// sum_out = x + alpha * delta; norm_out = LayerNorm(sum_out) * gamma + beta   [rows, cols]
int wk_add_layernorm(void* sum_out, void* norm_out, const void* x, const void* delta, float alpha,
                     const void* gamma, const void* beta, int rows, int cols, float eps, int dtype,
                     cudaStream_t stream);

// out1 = LayerNorm1(x + alpha * delta); out2 = LayerNorm2(out1 as stored)   [rows, cols]
int wk_add_layernorm2(void* out1, void* out2, const void* x, const void* delta, float alpha,
                      const void* g1, const void* b1, float eps1, const void* g2, const void* b2,
                      float eps2, int rows, int cols, int dtype, cudaStream_t stream);

// The two above with delta = round(sum_s parts[s] + bias): a GEMM's output as S fp32 split-K
// partials [S, rows, cols] and its bias [cols] (cols a multiple of 8, 16-byte aligned rows)
int wk_add_layernorm_parts(void* sum_out, void* norm_out, const void* x, const float* parts, int S,
                           const void* bias, float alpha, const void* gamma, const void* beta,
                           int rows, int cols, float eps, int dtype, cudaStream_t stream);
int wk_add_layernorm2_parts(void* out1, void* out2, const void* x, const float* parts, int S,
                            const void* bias, float alpha, const void* g1, const void* b1, float eps1,
                            const void* g2, const void* b2, float eps2, int rows, int cols, int dtype,
                            cudaStream_t stream);

// swish(LN(depthwise_conv(glu(h)))) with padded frames zeroed, h [B, T, 2C], w [C, K];
// C <= 1024, or <= 2048 for even C and 16-bit types
int wk_glu_dwconv(void* out, const void* h, const int32_t* lens, const float* w, const float* bias,
                  const float* pad_value, const float* ln_gamma, const float* ln_beta, int B, int T,
                  int C, int K, int causal, float eps, int dtype, cudaStream_t stream);

// rel-pos attention keys: out [B*T, h, 2*dk] = per head [k, p]; k rows of ld_k elements (head
// j at column j*dk), p [T rows of ld_p elements] shared by the batch
int wk_pack_rel_keys(void* out, const void* k, const void* p, int B, int T, int h, int dk,
                     long long ld_k, long long ld_p, int dtype, cudaStream_t stream);

// log_softmax over V (row stride ld) in fp32, plus its top-k values and indices
int wk_log_softmax_topk(float* logp, float* topv, int64_t* topi, const void* x, int rows, int V,
                        int ld, int k, int dtype, cudaStream_t stream);

// log_softmax(x)[target] per position of N sequences of length L (0 past lens)
int wk_log_softmax_gather(float* out, const void* x, const int64_t* target, const int32_t* lens,
                          int N, int L, int V, int ld, int dtype, cudaStream_t stream);

// softmax(((q+u) k^T + (q+v) p^T) * scale + bias) v; qv/p null for plain attention
int wk_attention(void* out, const void* qu, const void* k, const void* v, const void* qv,
                 const void* p, const void* bias, int B, int H, int Tq, int Tk, int dk, int k_batch,
                 int p_batch, int bias_b, int bias_h, int bias_q, float scale, int dtype,
                 cudaStream_t stream);

// CTC prefix beam search (+ n-gram LM fusion when lm_tables, a wks::LMTables*, is not null) of
// B utterances, one thread block each (ctc_search_gpu.cu); workspace: B x
// wk_ctc_search_workspace(T, K, beam) bytes. Outputs as wk_ctc_prefix_beam_search_lm of the
// C++ search, plus out_status[b] = 1 where a prefix was truncated to max_len (zero it first).
int64_t wk_ctc_search_workspace(int T, int K, int beam);
int wk_ctc_search(const float* topv, const int64_t* topi, const int32_t* lens, int B, int T, int K,
                  int beam, int blank, int max_len, int32_t* out_tokens, int32_t* out_lens,
                  double* out_scores, int32_t* out_count, int32_t* out_status,
                  const void* lm_tables, int eos, double lm_weight, double length_bonus,
                  double* out_lm, void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
