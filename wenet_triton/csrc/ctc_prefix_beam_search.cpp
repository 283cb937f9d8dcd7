// CTC prefix beam search with WeNet's exact semantics (candidate order: top-k symbols outer,
// current hypotheses inner; stable sort by log-add(pb, pnb); log-add computed like WeNet's
// `log_add` in double precision). Prefixes live in a trie, so a prefix is one node id.
// Optionally fuses a back-off n-gram LM (shallow fusion): prefixes are then ranked by
// ctc + lm_weight * lm + length_bonus * len. Plain C ABI for ctypes; one call decodes a batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <unordered_map>
#include <vector>

#include "ctc_search_block.h"

namespace {

constexpr double NEG_INF = -std::numeric_limits<double>::infinity();

// exp() of a difference to the maximum, skipping the calls whose result is exact anyway
// (exp(0) = 1, exp(-inf) = 0): same values as calling exp, bit for bit, at a third the cost.
inline double exp_rel(double d) { return d == 0.0 ? 1.0 : (d == NEG_INF ? 0.0 : std::exp(d)); }

inline double log_add2(double a, double b) {
  const double m = a > b ? a : b;
  if (m == NEG_INF) return NEG_INF;
  return m + std::log(exp_rel(a - m) + exp_rel(b - m));
}

inline double log_add3(double a, double b, double c) {
  double m = a > b ? a : b;
  m = m > c ? m : c;
  if (m == NEG_INF) return NEG_INF;
  return m + std::log(exp_rel(a - m) + exp_rel(b - m) + exp_rel(c - m));
}

struct Trie {
  // children in one hash map keyed by (parent, token): no per-node allocation
  std::vector<int> parent, token, depth;
  std::vector<double> lm;  // LM search: the prefix's LM log-prob and the length of its
  std::vector<int> lm_ctx;  // longest suffix that is an n-gram of the LM (<s> included)
  std::unordered_map<uint64_t, int> children;
  Trie() {
    parent.push_back(-1); token.push_back(-1); depth.push_back(0); lm.push_back(0.0);
    lm_ctx.push_back(1);
    children.reserve(1024);
  }
  int child(int node, int tok, double lm_score = 0.0, int ctx = 0) {
    const uint64_t key = ((uint64_t)(uint32_t)node << 32) | (uint32_t)tok;
    auto it = children.find(key);
    if (it != children.end()) return it->second;
    const int id = (int)parent.size();
    parent.push_back(node);
    token.push_back(tok);
    depth.push_back(depth[node] + 1);
    lm.push_back(lm_score);
    lm_ctx.push_back(ctx);
    children.emplace(key, id);
    return id;
  }
};

// Back-off n-gram model: per order an open-addressing hash table from the packed n-gram
// (`bits` per token, oldest first, as in wenet_triton/lm.py) to ln P and ln back-off weight.
// Built once per LM (wk_lm_create) and shared by every search call.
struct NgramLM {
  struct Slot { int64_t key; double logp, bow; };  // key -1: empty
  int order = 0, bits = 0, bos = 0;
  std::vector<std::vector<Slot>> tables;
  std::vector<uint64_t> masks;
  static uint64_t hash(int64_t k) { return (uint64_t)k * 0x9E3779B97F4A7C15ull; }
  NgramLM(int order_, int bits_, int bos_, const int64_t* const* codes, const double* const* logp,
          const double* const* bow, const int64_t* count)
      : order(order_), bits(bits_), bos(bos_), tables(order_), masks(order_) {
    for (int n = 0; n < order; ++n) {
      size_t size = 16;
      while (size * 7 < (size_t)count[n] * 10) size <<= 1;  // load <= 0.7
      tables[n].assign(size, Slot{-1, 0.0, 0.0});
      masks[n] = size - 1;
      for (int64_t i = 0; i < count[n]; ++i) {
        uint64_t h = (hash(codes[n][i]) >> 20) & masks[n];
        while (tables[n][h].key != -1) h = (h + 1) & masks[n];
        tables[n][h] = Slot{codes[n][i], logp[n][i], bow[n][i]};
      }
    }
  }
  // the entry of `code` in order n (1-based) or nullptr
  const Slot* find(int n, int64_t code) const {
    const std::vector<Slot>& t = tables[n - 1];
    for (uint64_t h = (hash(code) >> 20) & masks[n - 1];; h = (h + 1) & masks[n - 1]) {
      if (t[h].key == code) return &t[h];
      if (t[h].key == -1) return nullptr;
    }
  }
  // ln P(tok | the prefix ending at trie node `node`), backing off as ARPA prescribes, and
  // in *next_ctx the new prefix's longest n-gram suffix. The search starts at the node's
  // longest n-gram suffix: longer contexts are not in the model, so (ARPA's prefix
  // property) neither are their n-grams, and their back-off weight is 0, as if visited.
  // Scores depend only on (context, token): `cache` keeps them across the hypotheses of a
  // batch, which mostly differ in older tokens.
  using Cache = std::unordered_map<uint64_t, std::pair<double, int>>;
  double score(const Trie& trie, int node, int tok, int* next_ctx, Cache* cache) const {
    int ctx[16];
    int n = 0;  // context, newest first; <s> before the first token
    for (int x = node; n < trie.lm_ctx[node]; x = trie.parent[x]) {
      if (x == 0) { ctx[n++] = bos; break; }
      ctx[n++] = trie.token[x];
    }
    uint64_t key = 0;  // context and token packed like an n-gram, plus the context length
    for (int i = n - 1; i >= 0; --i) key = (key << bits) | (uint64_t)ctx[i];
    key = (((key << bits) | (uint64_t)tok) << 4) | (uint64_t)n;
    auto it = cache->find(key);
    if (it != cache->end()) {
      *next_ctx = it->second.second;
      return it->second.first;
    }
    const double lp = lookup(ctx, n, tok, next_ctx);
    cache->emplace(key, std::make_pair(lp, *next_ctx));
    return lp;
  }
  double lookup(const int* ctx, int n, int tok, int* next_ctx) const {
    double acc = 0.0;
    for (int k = n; k >= 0; --k) {
      int64_t h = 0;
      for (int i = k - 1; i >= 0; --i) h = (h << bits) | ctx[i];
      const Slot* hit = find(k + 1, (h << bits) | tok);
      if (hit) {
        *next_ctx = k + 1 < order - 1 ? k + 1 : order - 1;
        return acc + hit->logp;
      }
      if (k > 0) {
        const Slot* c = find(k, h);
        if (c) acc += c->bow;
      }
    }
    *next_ctx = 0;
    return acc - 23.025850929940457;  // ln 1e-10: a token outside the LM
  }
};

struct Hyp {
  int node;
  double pb, pnb;
};

// A next-step prefix: an existing trie node, or (parent node, token) not yet in the trie
// (most extensions are pruned, so nodes are only made for the survivors). Its key is the
// (parent, token) pair either way, so the two forms of one prefix compare equal.
struct Cand {
  uint64_t key;
  int node, parent, tok;  // node < 0: pending extension of parent by tok
  double pb, pnb;
  double lm;   // LM search, pending extensions: the prefix's LM log-prob and n-gram
  int lm_ctx;  // suffix length (as in Trie), set once the LM has scored it
};

inline uint64_t pair_key(int parent, int tok) {
  return ((uint64_t)(uint32_t)parent << 32) | (uint32_t)tok;
}

// Accumulates next-step hypotheses in first-insertion order, like Python's dict: a vector
// plus a small open-addressing index (cleared by bumping a generation stamp), reused per frame.
struct NextHyps {
  std::vector<Cand> items;  // items[0, size): a fixed array (no push_back bookkeeping per entry)
  int size = 0;
  std::vector<int> slot_item;
  std::vector<uint32_t> slot_gen;
  uint32_t gen = 1, mask = 0;
  explicit NextHyps(size_t capacity) {
    size_t n = 16;
    while (n < 4 * capacity) n <<= 1;
    slot_item.assign(n, 0);
    slot_gen.assign(n, 0);
    mask = (uint32_t)(n - 1);
    items.resize(capacity);
  }
  void clear() { size = 0; ++gen; }
  // returns the entry and whether it was just created
  Cand& get(uint64_t key, int node, int parent, int tok, bool* fresh) {
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & mask;
    for (;; h = (h + 1) & mask) {
      if (slot_gen[h] != gen) break;
      Cand& c = items[slot_item[h]];
      if (c.key == key) { *fresh = false; return c; }
    }
    slot_gen[h] = gen;
    slot_item[h] = size;
    Cand& c = items[size++];
    c = Cand{key, node, parent, tok, NEG_INF, NEG_INF, 0.0, 0};
    *fresh = true;
    return c;
  }
};

inline bool by_score_desc(const std::pair<double, int>& a, const std::pair<double, int>& c) {
  return a.first > c.first;
}

// Score descending, ties by index (insertion order): with distinct indices a total order, so
// any sort by it gives exactly what a stable sort by score gives to entries in index order.
// Scores go in through rank(): a NaN score (log-probs of a broken model) ranks as -inf, since
// std::sort needs a strict weak order and NaN compares false both ways (undefined
// behaviour, reads out of bounds).
struct ScoreThenIndex {
  static double rank(double x) { return x != x ? NEG_INF : x; }
  bool operator()(const std::pair<double, int>& a, const std::pair<double, int>& c) const {
    return a.first > c.first || (a.first == c.first && a.second < c.second);
  }
};

// A search in progress: the prefixes seen (trie) and the beam after the frames so far.
// search() runs one over a whole utterance; the wk_search_* entry points keep one per stream
// and feed it frames as they come (a live stream), with the same code and so the same result.
struct SearchState {
  Trie trie;
  std::vector<Hyp> cur{{0, 0.0, NEG_INF}};
  int frames = 0;
};

struct SearchParams {
  int beam, blank;
  const NgramLM* lm;
  double lm_weight, length_bonus;
  int eos;
};

// Frames [0, len) of one utterance's (len, K) top-k log-probs/ids, appended to st.
void advance(SearchState& st, const float* topv, const int64_t* topi, int len, int K,
             const SearchParams& p, NgramLM::Cache* lm_cache) {
  const int beam = p.beam, blank = p.blank;
  const NgramLM* lm = p.lm;
  const double lm_weight = p.lm_weight, length_bonus = p.length_bonus;
  const int width = beam < K ? beam : K;
  Trie& trie = st.trie;
  std::vector<Hyp>& cur = st.cur;
  NextHyps next(2 * (size_t)beam * width + 1);
  std::vector<std::pair<double, int>> order, exact;
  const uint64_t root_key = ~(uint64_t)0;
  for (int t = 0; t < len; ++t) {
    const float* v = topv + (size_t)t * K;
    const int64_t* ix = topi + (size_t)t * K;
    next.clear();
    bool fresh;
    for (int j = 0; j < width; ++j) {
      const int s = (int)ix[j];
      const double ps = (double)v[j];
      for (const Hyp& h : cur) {
        const uint64_t self = h.node == 0 ? root_key : pair_key(trie.parent[h.node], trie.token[h.node]);
        if (s == blank) {
          Cand& e = next.get(self, h.node, 0, 0, &fresh);
          e.pb = fresh ? log_add3(NEG_INF, h.pb + ps, h.pnb + ps)
                       : log_add3(e.pb, h.pb + ps, h.pnb + ps);
          continue;
        }
        const int last = h.node == 0 ? -1 : trie.token[h.node];
        if (s == last) {
          Cand& e = next.get(self, h.node, 0, 0, &fresh);  // *ss -> *s
          e.pnb = log_add2(e.pnb, h.pnb + ps);
          Cand& e2 = next.get(pair_key(h.node, s), -1, h.node, s, &fresh);  // *s-s -> *ss
          e2.pnb = log_add2(e2.pnb, h.pb + ps);
        } else {
          Cand& e = next.get(pair_key(h.node, s), -1, h.node, s, &fresh);
          e.pnb = fresh ? log_add2(h.pb + ps, h.pnb + ps) : log_add3(e.pnb, h.pb + ps, h.pnb + ps);
        }
      }
    }
    order.clear();
    for (int i = 0; i < next.size; ++i) {
      const Cand& c = next.items[i];
      double key = log_add2(c.pb, c.pnb);
      if (lm) {  // same association as the Python search, so ties break alike. A new
        // prefix gets its parent's LM score for now: an upper bound (log-probs are <= 0)
        const int depth = c.node >= 0 ? trie.depth[c.node] : trie.depth[c.parent] + 1;
        key = key + lm_weight * trie.lm[c.node >= 0 ? c.node : c.parent] + length_bonus * depth;
      }
      order.emplace_back(ScoreThenIndex::rank(key), i);
    }
    // Only the head of the stable order is read: the first `beam` entries, or with the LM
    // those walked until the bound check stops (usually a few beams' worth). Sorting just
    // that head (nth_element + sort, then the rest only if the walk gets there) by the total order
    // ScoreThenIndex is the stable sort's order, at a fraction of the cost (a full
    // stable sort of every candidate was half of the search's time).
    const size_t n_order = order.size();
    size_t sorted = std::min(n_order, (size_t)(lm ? 4 : 1) * (size_t)beam);
    if (sorted < n_order) std::nth_element(order.begin(), order.begin() + sorted, order.end(), ScoreThenIndex());
    std::sort(order.begin(), order.begin() + sorted, ScoreThenIndex());
    if (lm) {
      // Score new prefixes with the LM best bound first, until the next bound is below
      // the beam-th best exact score: the rest cannot enter the beam (LM lookups are most
      // of the search's time, and most candidates are far below the beam).
      exact.clear();
      std::priority_queue<double, std::vector<double>, std::greater<double>> top;
      for (size_t i = 0; i < n_order; ++i) {
        if (i == sorted) {  // the walk went past the sorted head: sort the next part (every
          // entry after the head ranks below it, so partitioning the rest extends the order)
          const size_t more = std::min(n_order, sorted + 2 * (size_t)beam);
          if (more < n_order)
            std::nth_element(order.begin() + sorted, order.begin() + more, order.end(), ScoreThenIndex());
          std::sort(order.begin() + sorted, order.begin() + more, ScoreThenIndex());
          sorted = more;
        }
        const auto& o = order[i];
        if (lm_weight >= 0 && (int)top.size() >= beam && o.first < top.top()) break;
        Cand& c = next.items[o.second];
        double key = o.first;
        if (c.node < 0) {
          c.lm = trie.lm[c.parent] + lm->score(trie, c.parent, c.tok, &c.lm_ctx, lm_cache);
          key = log_add2(c.pb, c.pnb) + lm_weight * c.lm + length_bonus * (trie.depth[c.parent] + 1);
        }
        exact.emplace_back(ScoreThenIndex::rank(key), o.second);
        top.push(key);
        if ((int)top.size() > beam) top.pop();
      }
      // what a stable sort of all exact scores would put first (ties: insertion order)
      std::sort(exact.begin(), exact.end(), ScoreThenIndex());
      order.swap(exact);
    }
    cur.clear();
    for (int i = 0; i < (int)order.size() && i < beam; ++i) {
      const Cand& c = next.items[order[i].second];
      cur.push_back({c.node >= 0 ? c.node : trie.child(c.parent, c.tok, c.lm, c.lm_ctx), c.pb, c.pnb});
    }
  }
  st.frames += len;
}

// The n-best of st (unchanged: with an LM each hypothesis is closed with </s> on a copy) into
// row b of the outputs; -> 1 if a prefix was longer than max_len (truncated), else 0.
int emit(SearchState& st, int b, int max_len, const SearchParams& p, NgramLM::Cache* lm_cache,
         int32_t* out_tokens, int32_t* out_lens, double* out_scores, int32_t* out_count,
         double* out_lm) {
  int status = 0;
  const Trie& trie = st.trie;
  std::vector<Hyp> cur = st.cur;
  std::vector<double> lm_total(cur.size(), 0.0);
  if (p.lm) {  // close each sentence with </s>, then order by the fused score
    std::vector<std::pair<double, int>> order;
    for (int i = 0; i < (int)cur.size(); ++i) {
      int ctx;
      lm_total[i] = trie.lm[cur[i].node] + p.lm->score(trie, cur[i].node, p.eos, &ctx, lm_cache);
      order.emplace_back(log_add2(cur[i].pb, cur[i].pnb) + p.lm_weight * lm_total[i] +
                             p.length_bonus * trie.depth[cur[i].node], i);
    }
    std::stable_sort(order.begin(), order.end(), by_score_desc);
    std::vector<Hyp> sorted;
    std::vector<double> lms;
    for (auto& o : order) { sorted.push_back(cur[o.second]); lms.push_back(lm_total[o.second]); }
    cur.swap(sorted);
    lm_total.swap(lms);
  }
  out_count[b] = (int32_t)cur.size();
  for (int i = 0; i < (int)cur.size(); ++i) {
    std::vector<int> seq;
    for (int n = cur[i].node; n != 0; n = trie.parent[n]) seq.push_back(trie.token[n]);
    std::reverse(seq.begin(), seq.end());
    if ((int)seq.size() > max_len) { status = 1; seq.resize(max_len); }
    const size_t o = (size_t)b * p.beam + i;
    out_lens[o] = (int32_t)seq.size();
    for (int q = 0; q < (int)seq.size(); ++q) out_tokens[o * max_len + q] = seq[q];
    out_scores[o] = log_add2(cur[i].pb, cur[i].pnb);
    if (out_lm) out_lm[o] = lm_total[i];
  }
  return status;
}

// lm == nullptr: WeNet's search. Otherwise out_lm receives each hypothesis' LM log-prob
// (with </s>) and hypotheses are ordered by the fused score.
int search(const float* topv, const int64_t* topi, const int32_t* lens, int B, int T, int K,
           int beam, int blank, int max_len, int32_t* out_tokens, int32_t* out_lens,
           double* out_scores, int32_t* out_count, const NgramLM* lm, double lm_weight,
           double length_bonus, int eos, double* out_lm) {
  int status = 0;
  const SearchParams p{beam, blank, lm, lm_weight, length_bonus, eos};
  NgramLM::Cache lm_cache;
  for (int b = 0; b < B; ++b) {
    SearchState st;
    const int len = lens[b] < T ? lens[b] : T;
    advance(st, topv + (size_t)b * T * K, topi + (size_t)b * T * K, len, K, p, &lm_cache);
    status |= emit(st, b, max_len, p, &lm_cache, out_tokens, out_lens, out_scores, out_count, out_lm);
  }
  return status;
}

}  // namespace

extern "C" {

// topv/topi: (B, T, K) per-frame top-K log-probs (descending) and token ids; lens: (B,).
// Outputs per utterance b, hypothesis i < out_count[b] (<= beam):
//   out_lens[b*beam+i], out_tokens[(b*beam+i)*max_len ...], out_scores[b*beam+i] (CTC).
// Returns 0, or 1 if some prefix was longer than max_len (it is truncated).
int wk_ctc_prefix_beam_search(const float* topv, const int64_t* topi, const int32_t* lens,
                              int B, int T, int K, int beam, int blank, int max_len,
                              int32_t* out_tokens, int32_t* out_lens, double* out_scores,
                              int32_t* out_count) {
  return search(topv, topi, lens, B, T, K, beam, blank, max_len, out_tokens, out_lens,
                out_scores, out_count, nullptr, 0.0, 0.0, 0, nullptr);
}

// An LM for the search: `lm_order` tables (packed codes, ln P, ln back-off) of lm_count[n]
// entries, copied into hash tables; tokens are unit ids, bos the id of <s>. nullptr if the
// order is outside 1..16. Free with wk_lm_free.
void* wk_lm_create(int lm_order, int lm_bits, int bos, const int64_t* const* lm_codes,
                   const double* const* lm_logp, const double* const* lm_bow,
                   const int64_t* lm_count) {
  if (lm_order < 1 || lm_order > 16) return nullptr;
  return new NgramLM(lm_order, lm_bits, bos, lm_codes, lm_logp, lm_bow, lm_count);
}

void wk_lm_free(void* lm) { delete static_cast<NgramLM*>(lm); }

// The search with LM fusion (lm from wk_lm_create; eos: the id of </s>).
// out_lm[b*beam+i]: the hypothesis' LM log-prob including </s>.
int wk_ctc_prefix_beam_search_lm(const float* topv, const int64_t* topi, const int32_t* lens,
                                 int B, int T, int K, int beam, int blank, int max_len,
                                 int32_t* out_tokens, int32_t* out_lens, double* out_scores,
                                 int32_t* out_count, const void* lm, int eos, double lm_weight,
                                 double length_bonus, double* out_lm) {
  return search(topv, topi, lens, B, T, K, beam, blank, max_len, out_tokens, out_lens,
                out_scores, out_count, static_cast<const NgramLM*>(lm), lm_weight, length_bonus,
                eos, out_lm);
}

// Searches that resume (live streams): wk_search_new() per stream, then each call of
// wk_search_advance feeds states[b] the next lens[b] frames of row b of (B, T, K) topv/topi
// (0: none) and writes every state's n-best after them (outputs as above; out_lm and lm may
// be null). A state fed its frames in any number of calls ends where one call would.
void* wk_search_new() { return new SearchState(); }

void wk_search_free(void* state) { delete static_cast<SearchState*>(state); }

int wk_search_frames(const void* state) { return static_cast<const SearchState*>(state)->frames; }

int wk_search_advance(void* const* states, const float* topv, const int64_t* topi,
                      const int32_t* lens, int B, int T, int K, int beam, int blank, int max_len,
                      int32_t* out_tokens, int32_t* out_lens, double* out_scores,
                      int32_t* out_count, const void* lm, int eos, double lm_weight,
                      double length_bonus, double* out_lm) {
  int status = 0;
  const SearchParams p{beam, blank, static_cast<const NgramLM*>(lm), lm_weight, length_bonus, eos};
  NgramLM::Cache lm_cache;
  for (int b = 0; b < B; ++b) {
    SearchState& st = *static_cast<SearchState*>(states[b]);
    const int len = lens[b] < T ? lens[b] : T;
    advance(st, topv + (size_t)b * T * K, topi + (size_t)b * T * K, len, K, p, &lm_cache);
    status |= emit(st, b, max_len, p, &lm_cache, out_tokens, out_lens, out_scores, out_count, out_lm);
  }
  return status;
}

// The GPU search's tables of an LM (order n, 1-based): capacity, then keys / ln P / ln back-off.
int64_t wk_lm_table_size(const void* lm, int n) {
  return (int64_t)static_cast<const NgramLM*>(lm)->tables[n - 1].size();
}

void wk_lm_table(const void* lm, int n, int64_t* keys, double* logp, double* bow) {
  const std::vector<NgramLM::Slot>& t = static_cast<const NgramLM*>(lm)->tables[n - 1];
  for (size_t i = 0; i < t.size(); ++i) { keys[i] = t[i].key; logp[i] = t[i].logp; bow[i] = t[i].bow; }
}

// The GPU search (ctc_search_block.h) run on the CPU by one "thread" per utterance: what the
// kernel computes, for tests without a GPU. The arguments of wk_ctc_search (lm_tables: the
// LMTables the GPU search gets, here over host memory) without workspace and stream.
int wk_ctc_search_emulated(const float* topv, const int64_t* topi, const int32_t* lens, int B,
                           int T, int K, int beam, int blank, int max_len, int32_t* out_tokens,
                           int32_t* out_lens, double* out_scores, int32_t* out_count,
                           int32_t* out_status, const void* lm_tables, int eos, double lm_weight,
                           double length_bonus, double* out_lm) {
  const wks::Args a = wks::make_args(topv, topi, lens, B, T, K, beam, blank, max_len, out_tokens,
                                     out_lens, out_scores, out_count, out_status, lm_tables, eos,
                                     lm_weight, length_bonus, out_lm);
  const wks::Sizes sz = wks::sizes(T, K, beam);
  std::vector<int64_t> work((size_t)(sz.bytes + sz.fast_bytes) / 8 + 1);  // 8-byte aligned
  char* base = reinterpret_cast<char*>(work.data());
  for (int b = 0; b < B; ++b) {
    wks::search_utterance(a, b, base, base + sz.bytes, 0, 1);
  }
  return 0;
}

}  // extern "C"
