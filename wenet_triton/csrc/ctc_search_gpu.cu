// Batched CTC prefix beam search (optional n-gram LM fusion) on the GPU: one thread block per
// utterance running ctc_search_block.h, the search the C++ one does, step for step.
#include <cuda_runtime.h>
#include <stdint.h>

#include "ctc_search_block.h"
#include "wenet_kernels.h"

namespace {

// The fast region in shared memory when it fits (beam 20, top-20: ~27 KB), else in the
// workspace after the utterance's global region.
__global__ void ctc_search_kernel(wks::Args a, char* work, int64_t stride, int64_t fast_offset,
                                  int use_shared) {
  extern __shared__ __align__(16) char smem[];
  char* mine = work + blockIdx.x * stride;
  wks::search_utterance(a, blockIdx.x, mine, use_shared ? smem : mine + fast_offset, threadIdx.x,
                        blockDim.x);
}

constexpr int64_t kMaxShared = 200 * 1024;

}  // namespace

extern "C" {

int64_t wk_ctc_search_workspace(int T, int K, int beam) {
  const wks::Sizes s = wks::sizes(T, K, beam);
  return s.bytes + (s.fast_bytes > kMaxShared ? s.fast_bytes : 0);
}

int wk_ctc_search(const float* topv, const int64_t* topi, const int32_t* lens, int B, int T, int K,
                  int beam, int blank, int max_len, int32_t* out_tokens, int32_t* out_lens,
                  double* out_scores, int32_t* out_count, int32_t* out_status,
                  const void* lm_tables, int eos, double lm_weight, double length_bonus,
                  double* out_lm, void* workspace, cudaStream_t stream) {
  if (B <= 0) return 0;
  const wks::Args a = wks::make_args(topv, topi, lens, B, T, K, beam, blank, max_len, out_tokens,
                                     out_lens, out_scores, out_count, out_status, lm_tables, eos,
                                     lm_weight, length_bonus, out_lm);
  const wks::Sizes s = wks::sizes(T, K, beam);
  const int use_shared = s.fast_bytes <= kMaxShared;
  const int64_t stride = s.bytes + (use_shared ? 0 : s.fast_bytes);
  if (use_shared && s.fast_bytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(ctc_search_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)s.fast_bytes);
    if (e != cudaSuccess) return (int)e;
  }
  // a thread per candidate (beam 20 of top-20: 420; each frame's LM lookups are chains of
  // dependent loads, so they run side by side rather than in turns)
  // (at most what the kernel's registers allow in one block: a launch beyond that fails with
  // "too many resources requested"; the kernel's loops stride by the block size)
  static int max_threads = 0;
  if (max_threads == 0) {
    cudaFuncAttributes attr;
    const cudaError_t e = cudaFuncGetAttributes(&attr, ctc_search_kernel);
    if (e != cudaSuccess) return (int)e;
    max_threads = attr.maxThreadsPerBlock / 32 * 32;
  }
  int threads = (int)((s.cands + 31) / 32 * 32);
  threads = threads < 64 ? 64 : (threads > max_threads ? max_threads : threads);
  ctc_search_kernel<<<B, threads, use_shared ? s.fast_bytes : 0, stream>>>(
      a, static_cast<char*>(workspace), stride, s.bytes, use_shared);
  return (int)cudaGetLastError();
}

#if defined(WKS_PHASE_TIMES)
// The profiling build's phase cycles (summed over the blocks of all launches since the last
// reset): parents, candidates (with the LM), ranking, gather, trie, n-best.
int wk_ctc_search_phase_cycles(unsigned long long* out, int reset) {
  cudaError_t e = cudaMemcpyFromSymbol(out, wks::wks_phase_cycles, 8 * sizeof(unsigned long long));
  if (e == cudaSuccess && reset) {
    const unsigned long long zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    e = cudaMemcpyToSymbol(wks::wks_phase_cycles, zero, sizeof(zero));
  }
  return (int)e;
}
#endif

}  // extern "C"
