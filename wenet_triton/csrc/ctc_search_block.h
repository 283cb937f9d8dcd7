// CTC prefix beam search (with optional n-gram LM shallow fusion) for one utterance, written
// for one CUDA thread block: the same search as ctc_prefix_beam_search.cpp, candidate for
// candidate, with its log-adds in the same order, so the n-best lists are the same.
//
// The code is compiled twice: as device code by ctc_search_gpu.cu (tid = threadIdx.x,
// nt = blockDim.x, WKS_SYNC = __syncthreads) and as host code by ctc_prefix_beam_search.cpp
// (tid = 0, nt = 1, WKS_SYNC empty), where tests run it on the CPU against the C++ search.
// Every phase between two WKS_SYNC() only writes entries it owns and only reads what earlier
// phases wrote, so one thread running the phases in turn computes what a block computes.
//
// Per frame: (1) each beam hypothesis finds its parent among the others; (2) one thread per
// candidate prefix (the beam's prefixes "stay", and prefix x top-k token "ext" unless that
// equals a beam prefix) replays, in WeNet's insertion order (top-k symbol outer, hypothesis
// inner), the log-adds that reach it, and scores the new prefixes with the LM; (3) the
// candidates are ranked (score, then first insertion: what a stable sort gives): each run of
// 32 sorted by one warp, then an entry's rank = its place in its run + the entries of the other
// runs ahead of it (binary searches), and the first `beam` take their places; (4) the
// survivors become trie nodes (a hash from (parent, token) to node, so a prefix keeps its
// node, as in the C++ trie). Phases inside one warp's run use WKS_WARP_SYNC (__syncwarp).
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define WKS_FN __device__ __forceinline__
#define WKS_HD __host__ __device__ inline
#else
#define WKS_FN inline
#define WKS_HD inline
#endif

#if defined(__CUDA_ARCH__)
#define WKS_SYNC() __syncthreads()
#define WKS_WARP_SYNC() __syncwarp()
#else
#define WKS_SYNC()
#define WKS_WARP_SYNC()
#endif

namespace wks {

// WKS_PHASE_TIMES (a profiling build: NVCC_FLAGS=-DWKS_PHASE_TIMES build.sh kernels ...):
// thread 0 of every block adds the clock cycles of each phase of the frame loop, barrier to
// barrier, into wks_phase_cycles (read by wk_ctc_search_phase_cycles; benchmarks/gpu_search.py --phases).
#if defined(__CUDACC__) && defined(WKS_PHASE_TIMES)
__device__ unsigned long long wks_phase_cycles[8];
#endif
#if defined(__CUDA_ARCH__) && defined(WKS_PHASE_TIMES)
#define WKS_MARK(p)                                                                    \
  if (tid == 0) {                                                                      \
    const long long now_ = clock64();                                                  \
    atomicAdd(&wks_phase_cycles[p], (unsigned long long)(now_ - wks_t_));              \
    wks_t_ = now_;                                                                     \
  }
#define WKS_MARK_START() long long wks_t_ = clock64();
#else
#define WKS_MARK(p)
#define WKS_MARK_START()
#endif

#define WKS_NEG_INF (-(double)INFINITY)
constexpr uint64_t EMPTY_KEY = ~(uint64_t)0;
constexpr int NO_POS = 0x7fffffff;

// Products without fused multiply-add (the C++ search, built for x86-64, has none), so the
// fused scores are the same doubles on both.
WKS_FN double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

WKS_FN double exp_rel(double d) { return d == 0.0 ? 1.0 : (d == WKS_NEG_INF ? 0.0 : exp(d)); }

WKS_FN double log_add2(double a, double b) {
  const double m = a > b ? a : b;
  if (m == WKS_NEG_INF) return WKS_NEG_INF;
  return m + log(exp_rel(a - m) + exp_rel(b - m));
}

WKS_FN double log_add3(double a, double b, double c) {
  double m = a > b ? a : b;
  m = m > c ? m : c;
  if (m == WKS_NEG_INF) return WKS_NEG_INF;
  return m + log(exp_rel(a - m) + exp_rel(b - m) + exp_rel(c - m));
}

// The back-off n-gram LM as the C++ search builds it (NgramLM): per order an open-addressing
// table of packed n-gram codes (key -1: empty) with ln P and ln back-off, here concatenated.
struct LMTables {
  int order, bits, bos;
  const int64_t* keys;
  const double* logp;
  const double* bow;
  int64_t offset[16];
  uint64_t mask[16];
};

WKS_FN int64_t lm_find(const LMTables& lm, int n, int64_t code) {
  const int64_t* keys = lm.keys + lm.offset[n - 1];
  const uint64_t mask = lm.mask[n - 1];
  for (uint64_t h = (((uint64_t)code * 0x9E3779B97F4A7C15ull) >> 20) & mask;; h = (h + 1) & mask) {
    if (keys[h] == code) return lm.offset[n - 1] + (int64_t)h;
    if (keys[h] == -1) return -1;
  }
}

// ln P(tok | ctx) backing off as ARPA prescribes (ctx newest first); *next_ctx: the length of
// the new prefix's longest n-gram suffix. NgramLM::lookup of the C++ search.
WKS_FN double lm_lookup(const LMTables& lm, const int* ctx, int n, int tok, int* next_ctx) {
  double acc = 0.0;
  for (int k = n; k >= 0; --k) {
    int64_t h = 0;
    for (int i = k - 1; i >= 0; --i) h = (h << lm.bits) | ctx[i];
    const int64_t hit = lm_find(lm, k + 1, (h << lm.bits) | tok);
    if (hit >= 0) {
      *next_ctx = k + 1 < lm.order - 1 ? k + 1 : lm.order - 1;
      return acc + lm.logp[hit];
    }
    if (k > 0) {
      const int64_t c = lm_find(lm, k, h);
      if (c >= 0) acc += lm.bow[c];
    }
  }
  *next_ctx = 0;
  return acc - 23.025850929940457;  // ln 1e-10: a token outside the LM
}

// One utterance's working memory: the trie and its hash in `work` (global memory), the beam,
// the candidates and the sort in `fast` (the block's shared memory on the GPU when it fits).
struct Work {
  int32_t *parent, *token, *depth, *lmctx;  // trie nodes
  double* lm;
  uint64_t* hist;  // the node's LM context (lmctx tokens, newest in the low bits, lm.bits each)
  uint64_t* hkey;  // (parent, token) -> node
  int32_t* hval;
  uint64_t hmask;
  int32_t *cnode, *cpar, *ctok;  // the beam: node, parent's index in the beam, last token
  double *cpb, *cpnb;
  int32_t *nnode, *nparent, *ntok, *nctx;  // the next beam, by rank (nnode -1: new prefix)
  double *npb, *npnb, *nlm;
  int32_t *pos, *cnd_node, *cnd_tok, *cnd_ctx;  // candidates (pos NO_POS: none)
  double *cnd_pb, *cnd_pnb, *cnd_lm;
  double* sort_key;  // the ranking: candidates in runs of 32 (score, insertion, candidate)
  int32_t *sort_pos, *sort_idx;
  int32_t* place;  // the next beam's candidates by rank (-1: empty)
  int32_t* scal;  // [0] beam size, [1] trie nodes
};

struct Sizes {
  int64_t nodes, hcap, cands, sort, bytes, fast_bytes;
};

// Sizes of the working memory of one utterance of T frames (8-byte aligned arrays): `bytes`
// of global memory, `fast_bytes` of fast memory.
WKS_HD Sizes sizes(int T, int K, int beam) {
  const int width = beam < K ? beam : K;
  Sizes s;
  s.nodes = 1 + (int64_t)beam * (T > 0 ? T : 1);
  s.hcap = 16;
  while (s.hcap < 2 * s.nodes) s.hcap <<= 1;
  s.cands = (int64_t)beam + (int64_t)beam * width;
  s.sort = (s.cands + 31) / 32 * 32;  // whole runs of 32
  auto a8 = [](int64_t n) { return (n + 7) & ~(int64_t)7; };
  s.bytes = 4 * a8(4 * s.nodes) + 2 * 8 * s.nodes + 8 * s.hcap + a8(4 * s.hcap);
  s.fast_bytes = 3 * a8(4 * beam) + 2 * 8 * beam + 4 * a8(4 * beam) + 3 * 8 * beam +
                 4 * a8(4 * s.cands) + 3 * 8 * s.cands + 8 * s.sort + 2 * a8(4 * s.sort) + a8(4 * beam) + a8(4 * 2);
  return s;
}

WKS_FN Work bind(char* base, char* fast, const Sizes& s, int beam) {
  Work w;
  char* p = base;
  auto take = [&p](int64_t bytes) { char* q = p; p += (bytes + 7) & ~(int64_t)7; return q; };
  w.parent = (int32_t*)take(4 * s.nodes);
  w.token = (int32_t*)take(4 * s.nodes);
  w.depth = (int32_t*)take(4 * s.nodes);
  w.lmctx = (int32_t*)take(4 * s.nodes);
  w.lm = (double*)take(8 * s.nodes);
  w.hist = (uint64_t*)take(8 * s.nodes);
  w.hkey = (uint64_t*)take(8 * s.hcap);
  w.hval = (int32_t*)take(4 * s.hcap);
  w.hmask = (uint64_t)s.hcap - 1;
  p = fast;
  w.cnode = (int32_t*)take(4 * beam);
  w.cpar = (int32_t*)take(4 * beam);
  w.ctok = (int32_t*)take(4 * beam);
  w.cpb = (double*)take(8 * beam);
  w.cpnb = (double*)take(8 * beam);
  w.nnode = (int32_t*)take(4 * beam);
  w.nparent = (int32_t*)take(4 * beam);
  w.ntok = (int32_t*)take(4 * beam);
  w.nctx = (int32_t*)take(4 * beam);
  w.npb = (double*)take(8 * beam);
  w.npnb = (double*)take(8 * beam);
  w.nlm = (double*)take(8 * beam);
  w.pos = (int32_t*)take(4 * s.cands);
  w.cnd_node = (int32_t*)take(4 * s.cands);
  w.cnd_tok = (int32_t*)take(4 * s.cands);
  w.cnd_ctx = (int32_t*)take(4 * s.cands);
  w.cnd_pb = (double*)take(8 * s.cands);
  w.cnd_pnb = (double*)take(8 * s.cands);
  w.cnd_lm = (double*)take(8 * s.cands);
  w.sort_key = (double*)take(8 * s.sort);
  w.sort_pos = (int32_t*)take(4 * s.sort);
  w.sort_idx = (int32_t*)take(4 * s.sort);
  w.place = (int32_t*)take(4 * beam);
  w.scal = (int32_t*)take(4 * 2);
  return w;
}

// ln P(tok | the prefix at trie node `node`) (NgramLM::score of the C++ search). The context
// is the node's packed `hist` (the C++ search walks the prefix: the same tokens, newest first,
// <s> where the prefix begins), one load instead of a chain of dependent ones.
WKS_FN double lm_score(const LMTables& lm, const Work& w, int node, int tok, int* next_ctx) {
  int ctx[16];
  const int n = w.lmctx[node];
  const uint64_t hist = w.hist[node], mask = (1ull << lm.bits) - 1;
  for (int i = 0; i < n; ++i) ctx[i] = (int)((hist >> (i * lm.bits)) & mask);
  return lm_lookup(lm, ctx, n, tok, next_ctx);
}

// The packed context of prefix (parent + tok) whose longest LM suffix has `ctx` tokens: tok,
// then the parent's newest ctx - 1 (ctx <= the parent's lmctx + 1).
WKS_FN uint64_t child_hist(const Work& w, int parent, int tok, int ctx, int bits) {
  const uint64_t h = (w.hist[parent] << bits) | (uint64_t)(uint32_t)tok;
  return ctx * bits >= 64 ? h : h & ((1ull << (ctx * bits)) - 1);
}

WKS_FN int atomic_add(int32_t* p, int v) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(p, v);
#else
  const int old = *p;
  *p += v;
  return old;
#endif
}

WKS_FN uint64_t atomic_cas(uint64_t* p, uint64_t expect, uint64_t value) {
#if defined(__CUDA_ARCH__)
  return (uint64_t)atomicCAS((unsigned long long*)p, (unsigned long long)expect,
                             (unsigned long long)value);
#else
  const uint64_t old = *p;
  if (old == expect) *p = value;
  return old;
#endif
}

// The trie node of prefix (parent node + tok), made if new. Threads calling this at once
// must ask for different prefixes (the survivors of a frame are different prefixes).
WKS_FN int trie_child(const Work& w, int parent, int tok, double lmv, int ctx, int bits) {
  const uint64_t key = ((uint64_t)(uint32_t)parent << 32) | (uint32_t)tok;
  for (uint64_t h = ((key * 0x9E3779B97F4A7C15ull) >> 40) & w.hmask;; h = (h + 1) & w.hmask) {
    uint64_t k = w.hkey[h];
    if (k == EMPTY_KEY) {
      k = atomic_cas(&w.hkey[h], EMPTY_KEY, key);
      if (k == EMPTY_KEY) {
        const int id = atomic_add(&w.scal[1], 1);
        w.parent[id] = parent;
        w.token[id] = tok;
        w.depth[id] = w.depth[parent] + 1;
        w.lm[id] = lmv;
        w.lmctx[id] = ctx;
        w.hist[id] = child_hist(w, parent, tok, ctx, bits);
        w.hval[h] = id;
        return id;
      }
    }
    if (k == key) return w.hval[h];
  }
}

struct Args {
  const float* topv;    // (B, T, K) per-frame top-K log-probs, descending
  const int64_t* topi;  // (B, T, K) their token ids
  const int32_t* lens;  // (B,)
  int B, T, K, beam, blank, max_len;
  int has_lm, eos;
  LMTables lm;
  double lm_weight, length_bonus;
  int32_t* out_tokens;  // (B, beam, max_len)
  int32_t* out_lens;    // (B, beam)
  double* out_scores;   // (B, beam): CTC log-prob
  int32_t* out_count;   // (B,)
  int32_t* out_status;  // (B,): 1 if a prefix was longer than max_len (truncated)
  double* out_lm;       // (B, beam) or null: LM log-prob with </s>
};

// The Args of the C entry points (wk_ctc_search, wk_ctc_search_emulated), which take the same
// arguments; lm_tables: a LMTables* or null (no LM).
inline Args make_args(const float* topv, const int64_t* topi, const int32_t* lens, int B, int T,
                      int K, int beam, int blank, int max_len, int32_t* out_tokens,
                      int32_t* out_lens, double* out_scores, int32_t* out_count,
                      int32_t* out_status, const void* lm_tables, int eos, double lm_weight,
                      double length_bonus, double* out_lm) {
  Args a{};
  a.topv = topv; a.topi = topi; a.lens = lens;
  a.B = B; a.T = T; a.K = K; a.beam = beam; a.blank = blank; a.max_len = max_len;
  a.has_lm = lm_tables != nullptr;
  if (lm_tables) a.lm = *static_cast<const LMTables*>(lm_tables);
  a.eos = eos; a.lm_weight = lm_weight; a.length_bonus = length_bonus;
  a.out_tokens = out_tokens; a.out_lens = out_lens; a.out_scores = out_scores;
  a.out_count = out_count; a.out_status = out_status; a.out_lm = out_lm;
  return a;
}

// a before b in the beam's order: higher score, then earlier insertion (a stable sort's order)
WKS_FN bool ahead(double ka, int pa, double kb, int pb) { return ka > kb || (ka == kb && pa < pb); }

// The search of utterance b by threads tid = 0 .. nt-1 of one block, in `work`
// (sizes().bytes) and `fast` (sizes().fast_bytes).
WKS_FN void search_utterance(const Args& a, int b, char* work, char* fast, int tid, int nt) {
  const Sizes sz = sizes(a.T, a.K, a.beam);
  const Work w = bind(work, fast, sz, a.beam);
  const int beam = a.beam, blank = a.blank, width = beam < a.K ? beam : a.K;
  const bool has_lm = a.has_lm != 0;
  const double lw = a.lm_weight, lb = a.length_bonus;
  for (int64_t x = tid; x < sz.hcap; x += nt) w.hkey[x] = EMPTY_KEY;
  if (tid == 0) {
    w.parent[0] = -1; w.token[0] = -1; w.depth[0] = 0; w.lm[0] = 0.0; w.lmctx[0] = 1;
    w.hist[0] = has_lm ? (uint64_t)(uint32_t)a.lm.bos : 0;
    w.cnode[0] = 0; w.cpb[0] = 0.0; w.cpnb[0] = WKS_NEG_INF;
    w.scal[0] = 1; w.scal[1] = 1;
  }
  WKS_SYNC();
  WKS_MARK_START();
  const int len = a.lens[b] < a.T ? (a.lens[b] > 0 ? a.lens[b] : 0) : a.T;
  for (int t = 0; t < len; ++t) {
    const float* v = a.topv + ((int64_t)b * a.T + t) * a.K;
    const int64_t* ix = a.topi + ((int64_t)b * a.T + t) * a.K;
    const int ncur = w.scal[0];
    // (1) each hypothesis' parent in the beam (-1: none)
    for (int g = tid; g < ncur; g += nt) {
      const int node = w.cnode[g];
      const int par = node == 0 ? -1 : w.parent[node];
      int idx = -1;
      if (par >= 0)
        for (int h = 0; h < ncur; ++h)
          if (w.cnode[h] == par) { idx = h; break; }
      w.cpar[g] = idx;
      w.ctok[g] = node == 0 ? -1 : w.token[node];
    }
    WKS_SYNC();
    WKS_MARK(0);
    // (2) candidates: c < beam is hypothesis c staying, beam + h * width + j is hypothesis h
    // extended by top-k symbol j. Insertion order: (j * ncur + h) * 2 (+1 for the extension
    // made after the stay in WeNet's repeated-symbol case).
    const int ncand = beam + ncur * width;
    for (int c = tid; c < ncand; c += nt) {
      int pos = NO_POS;
      double pb = WKS_NEG_INF, pnb = WKS_NEG_INF, lmv = 0.0;
      int node = -1, tok = -1, ctx = 0, depth = 0;
      if (c < beam) {
        const int g = c;
        if (g < ncur) {
          node = w.cnode[g];
          const int last = w.ctok[g];
          const int p = w.cpar[g];
          const double gpb = w.cpb[g], gpnb = w.cpnb[g];
          const double ppb = p >= 0 ? w.cpb[p] : 0.0, ppnb = p >= 0 ? w.cpnb[p] : 0.0;
          const int plast = p >= 0 ? w.ctok[p] : -1;
          for (int j = 0; j < width; ++j) {
            const int s = (int)ix[j];
            const double ps = (double)v[j];
            const bool ev_g = s == blank || s == last;
            const bool ev_p = p >= 0 && s == last;  // the parent extended by our last token
            for (int turn = 0; turn < 2; ++turn) {
              const bool parent_turn = (turn == 0) == (p < g);
              if (parent_turn && ev_p) {
                if (s == plast) {
                  pnb = log_add2(pnb, ppb + ps);
                  const int q = (j * ncur + p) * 2 + 1;
                  pos = q < pos ? q : pos;
                } else {
                  pnb = log_add3(pnb, ppb + ps, ppnb + ps);
                  const int q = (j * ncur + p) * 2;
                  pos = q < pos ? q : pos;
                }
              } else if (!parent_turn && ev_g) {
                if (s == blank) pb = log_add3(pb, gpb + ps, gpnb + ps);
                else pnb = log_add2(pnb, gpnb + ps);
                const int q = (j * ncur + g) * 2;
                pos = q < pos ? q : pos;
              }
            }
          }
          depth = w.depth[node];
          lmv = w.lm[node];
        }
      } else {
        const int h = (c - beam) / width, j = (c - beam) % width;
        const int s = (int)ix[j];
        bool merged = s == blank;
        for (int g = 0; g < ncur; ++g)
          merged |= w.cpar[g] == h && w.ctok[g] == s;
        if (!merged) {
          const int hn = w.cnode[h];
          const double ps = (double)v[j];
          if (s == w.ctok[h]) {
            pnb = log_add2(WKS_NEG_INF, w.cpb[h] + ps);
            pos = (j * ncur + h) * 2 + 1;
          } else {
            pnb = log_add2(w.cpb[h] + ps, w.cpnb[h] + ps);
            pos = (j * ncur + h) * 2;
          }
          node = hn;  // the parent, for a new prefix
          tok = s;
          depth = w.depth[hn] + 1;
          if (has_lm) lmv = w.lm[hn] + lm_score(a.lm, w, hn, s, &ctx);
        }
      }
      w.pos[c] = pos;
      w.cnd_node[c] = node;
      w.cnd_tok[c] = tok;
      w.cnd_ctx[c] = ctx;
      w.cnd_pb[c] = pb;
      w.cnd_pnb[c] = pnb;
      w.cnd_lm[c] = lmv;
      double key = log_add2(pb, pnb);
      if (has_lm) key = key + dmul(lw, lmv) + dmul(lb, (double)depth);
      w.sort_key[c] = pos == NO_POS ? WKS_NEG_INF : key;
      w.sort_pos[c] = pos;
      w.sort_idx[c] = c;
      if (c < beam) w.place[c] = -1;  // the next beam's places (ncand >= beam)
    }
    const int nrun = (ncand + 31) / 32;  // (3) the next beam, in two steps:
    for (int c = ncand + tid; c < nrun * 32; c += nt) {
      w.sort_key[c] = WKS_NEG_INF;
      w.sort_pos[c] = NO_POS;
      w.sort_idx[c] = -1;
    }
    WKS_SYNC();
    WKS_MARK(1);
    // (3a) each run of 32 candidates sorted in beam order (score, then first insertion: a
    // total order, insertions are distinct) by one warp, a bitonic sort with warp barriers
    {
      const int lanes = nt < 32 ? nt : 32, lane = tid % 32, nwarp = (nt + 31) / 32;
      for (int run = tid / 32; run < nrun; run += nwarp) {
        const int base = run * 32;
        for (int k = 2; k <= 32; k <<= 1) {
          for (int j = k >> 1; j > 0; j >>= 1) {
            for (int e = lane; e < 32; e += lanes) {
              const int i = base + e, o = base + (e ^ j);
              if (o <= i) continue;
              const bool first = (e & k) == 0;  // this run puts the entry ahead first
              const bool swap = first ? ahead(w.sort_key[o], w.sort_pos[o], w.sort_key[i], w.sort_pos[i])
                                      : ahead(w.sort_key[i], w.sort_pos[i], w.sort_key[o], w.sort_pos[o]);
              if (swap) {
                const double tk = w.sort_key[i]; w.sort_key[i] = w.sort_key[o]; w.sort_key[o] = tk;
                const int tp = w.sort_pos[i]; w.sort_pos[i] = w.sort_pos[o]; w.sort_pos[o] = tp;
                const int ti = w.sort_idx[i]; w.sort_idx[i] = w.sort_idx[o]; w.sort_idx[o] = ti;
              }
            }
            WKS_WARP_SYNC();
          }
        }
      }
    }
    WKS_SYNC();
    // (3b) an entry among the first `beam` of its run takes place p + (entries of the other
    // runs ahead of it, a binary search in each): its rank among all candidates, so the
    // places 0 .. beam-1 hold the first `beam` of the C++ search's stable sort
    {
      const int head = beam < 32 ? beam : 32;
      for (int i = tid; i < nrun * 32; i += nt) {
        const int run = i / 32, p = i % 32;
        if (p >= head || w.sort_pos[i] == NO_POS) continue;
        const double ki = w.sort_key[i];
        const int pi = w.sort_pos[i];
        int rank = p;
        for (int r2 = 0; r2 < nrun && rank < beam; ++r2) {
          if (r2 == run) continue;
          int lo = 0, hi = head;  // entries lo.. of run r2 are not ahead of entry i
          while (lo < hi) {
            const int mid = (lo + hi) >> 1, q = r2 * 32 + mid;
            if (ahead(w.sort_key[q], w.sort_pos[q], ki, pi)) lo = mid + 1; else hi = mid;
          }
          rank += lo;
        }
        if (rank < beam) w.place[rank] = w.sort_idx[i];
      }
    }
    WKS_SYNC();
    WKS_MARK(2);
    int nnext = 0;  // the places taken: 0 .. (valid candidates or beam) - 1
    while (nnext < beam && w.place[nnext] >= 0) ++nnext;
    for (int r = tid; r < nnext; r += nt) {
      const int c = w.place[r];
      w.nnode[r] = c < beam ? w.cnd_node[c] : -1;
      w.nparent[r] = w.cnd_node[c];
      w.ntok[r] = w.cnd_tok[c];
      w.nctx[r] = w.cnd_ctx[c];
      w.npb[r] = w.cnd_pb[c];
      w.npnb[r] = w.cnd_pnb[c];
      w.nlm[r] = w.cnd_lm[c];
    }
    WKS_SYNC();
    WKS_MARK(3);
    // (4) the survivors become the beam
    for (int r = tid; r < nnext; r += nt) {
      w.cnode[r] = w.nnode[r] >= 0 ? w.nnode[r]
                                    : trie_child(w, w.nparent[r], w.ntok[r], w.nlm[r], w.nctx[r], a.lm.bits);
      w.cpb[r] = w.npb[r];
      w.cpnb[r] = w.npnb[r];
    }
    if (tid == 0) w.scal[0] = nnext;
    WKS_SYNC();
    WKS_MARK(4);
  }
  // the n-best: with an LM each prefix closed with </s> and ordered by the fused score
  const int ncur = w.scal[0];
  for (int i = tid; i < ncur; i += nt) {
    const int node = w.cnode[i];
    const double ctc = log_add2(w.cpb[i], w.cpnb[i]);
    double total = 0.0, key = ctc;
    if (has_lm) {
      int ctx;
      total = w.lm[node] + lm_score(a.lm, w, node, a.eos, &ctx);
      key = ctc + dmul(lw, total) + dmul(lb, (double)w.depth[node]);
    }
    w.sort_key[i] = key;
    w.cnd_lm[i] = total;
    w.cnd_pb[i] = ctc;
  }
  WKS_SYNC();
  for (int i = tid; i < ncur; i += nt) {
    int rank = i;
    if (has_lm) {
      rank = 0;
      for (int d = 0; d < ncur; ++d)
        if (ahead(w.sort_key[d], d, w.sort_key[i], i)) ++rank;
    }
    const int node = w.cnode[i];
    const int64_t o = (int64_t)b * beam + rank;
    int32_t* toks = a.out_tokens + o * a.max_len;
    for (int n = node; n != 0; n = w.parent[n])
      if (w.depth[n] - 1 < a.max_len) toks[w.depth[n] - 1] = w.token[n];
    const int d = w.depth[node];
    a.out_lens[o] = d < a.max_len ? d : a.max_len;
    if (d > a.max_len) a.out_status[b] = 1;
    a.out_scores[o] = w.cnd_pb[i];
    if (a.out_lm) a.out_lm[o] = w.cnd_lm[i];
  }
  if (tid == 0) a.out_count[b] = ncur;
  WKS_MARK(5);
}

}  // namespace wks
