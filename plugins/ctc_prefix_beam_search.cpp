// CTC prefix beam search with WeNet's exact semantics (candidate order: top-k symbols outer,
// current hypotheses inner; stable sort by log-add(pb, pnb); log-add computed like WeNet's
// `log_add` in double precision). Prefixes live in a trie, so a prefix is one node id.
// Optionally fuses a back-off n-gram LM (shallow fusion): prefixes are then ranked by
// ctc + lm_weight * lm + length_bonus * len. Plain C ABI for ctypes; one call decodes a batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

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
  std::vector<double> lm;  // LM log-prob of the prefix (LM search only)
  std::unordered_map<uint64_t, int> children;
  Trie() {
    parent.push_back(-1); token.push_back(-1); depth.push_back(0); lm.push_back(0.0);
    children.reserve(1024);
  }
  int child(int node, int tok, double lm_score = 0.0) {
    const uint64_t key = ((uint64_t)(uint32_t)node << 32) | (uint32_t)tok;
    auto it = children.find(key);
    if (it != children.end()) return it->second;
    const int id = (int)parent.size();
    parent.push_back(node);
    token.push_back(tok);
    depth.push_back(depth[node] + 1);
    lm.push_back(lm_score);
    children.emplace(key, id);
    return id;
  }
};

// Back-off n-gram model as sorted tables per order: n-grams packed `bits` per token
// (oldest first), ln P and ln back-off weight (0 where none), as in wenet_triton/lm.py.
struct NgramLM {
  int order, bits, bos;
  const int64_t* const* codes;
  const double* const* logp;
  const double* const* bow;
  const int64_t* count;
  // index of `code` in order n (1-based) or -1
  int64_t find(int n, int64_t code) const {
    const int64_t* b = codes[n - 1];
    const int64_t* e = b + count[n - 1];
    const int64_t* it = std::lower_bound(b, e, code);
    return (it != e && *it == code) ? it - b : -1;
  }
  // ln P(tok | the prefix ending at trie node `node`), backing off as ARPA prescribes
  double score(const Trie& trie, int node, int tok) const {
    int ctx[16];
    int n = 0;  // context, newest first; <s> when the prefix is shorter than order - 1
    for (int x = node; n < order - 1; x = trie.parent[x]) {
      if (x == 0) { ctx[n++] = bos; break; }
      ctx[n++] = trie.token[x];
    }
    double acc = 0.0;
    for (int k = n; k >= 0; --k) {
      int64_t h = 0;
      for (int i = k - 1; i >= 0; --i) h = (h << bits) | ctx[i];
      const int64_t at = find(k + 1, (h << bits) | tok);
      if (at >= 0) return acc + logp[k][at];
      if (k > 0) {
        const int64_t hc = find(k, h);
        if (hc >= 0) acc += bow[k - 1][hc];
      }
    }
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
  double lm;  // LM search: the prefix's LM log-prob, set when it is created
};

inline uint64_t pair_key(int parent, int tok) {
  return ((uint64_t)(uint32_t)parent << 32) | (uint32_t)tok;
}

// Accumulates next-step hypotheses in first-insertion order, like Python's dict: a vector
// plus a small open-addressing index (cleared by bumping a generation stamp), reused per frame.
struct NextHyps {
  std::vector<Cand> items;
  std::vector<int> slot_item;
  std::vector<uint32_t> slot_gen;
  uint32_t gen = 1, mask = 0;
  explicit NextHyps(size_t capacity) {
    size_t n = 16;
    while (n < 4 * capacity) n <<= 1;
    slot_item.assign(n, 0);
    slot_gen.assign(n, 0);
    mask = (uint32_t)(n - 1);
    items.reserve(capacity);
  }
  void clear() { items.clear(); ++gen; }
  // returns the entry and whether it was just created
  Cand& get(uint64_t key, int node, int parent, int tok, bool* fresh) {
    uint32_t h = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & mask;
    for (;; h = (h + 1) & mask) {
      if (slot_gen[h] != gen) break;
      Cand& c = items[slot_item[h]];
      if (c.key == key) { *fresh = false; return c; }
    }
    slot_gen[h] = gen;
    slot_item[h] = (int)items.size();
    items.push_back({key, node, parent, tok, NEG_INF, NEG_INF, 0.0});
    *fresh = true;
    return items.back();
  }
};

// lm == nullptr: WeNet's search. Otherwise out_lm receives each hypothesis' LM log-prob
// (with </s>) and hypotheses are ordered by the fused score.
int search(const float* topv, const int64_t* topi, const int32_t* lens, int B, int T, int K,
           int beam, int blank, int max_len, int32_t* out_tokens, int32_t* out_lens,
           double* out_scores, int32_t* out_count, const NgramLM* lm, double lm_weight,
           double length_bonus, int eos, double* out_lm) {
  int status = 0;
  const int width = beam < K ? beam : K;
  for (int b = 0; b < B; ++b) {
    Trie trie;
    std::vector<Hyp> cur{{0, 0.0, NEG_INF}};
    NextHyps next(2 * (size_t)beam * width + 1);
    std::vector<std::pair<double, int>> order;
    const uint64_t root_key = ~(uint64_t)0;
    const int len = lens[b] < T ? lens[b] : T;
    // an extension of `parent` by `s`, scored by the LM when it is new; the same
    // extensions come back frame after frame, so their LM scores are cached
    std::unordered_map<uint64_t, double> lm_cache;
    auto extend = [&](int parent, int s) -> Cand& {
      bool fresh;
      const uint64_t key = pair_key(parent, s);
      Cand& e = next.get(key, -1, parent, s, &fresh);
      if (fresh && lm) {
        auto it = lm_cache.find(key);
        if (it == lm_cache.end())
          it = lm_cache.emplace(key, trie.lm[parent] + lm->score(trie, parent, s)).first;
        e.lm = it->second;
      }
      return e;
    };
    for (int t = 0; t < len; ++t) {
      const float* v = topv + ((size_t)b * T + t) * K;
      const int64_t* ix = topi + ((size_t)b * T + t) * K;
      next.clear();
      bool fresh;
      for (int j = 0; j < width; ++j) {
        const int s = (int)ix[j];
        const double ps = (double)v[j];
        for (const Hyp& h : cur) {
          const uint64_t self = h.node == 0 ? root_key : pair_key(trie.parent[h.node], trie.token[h.node]);
          if (s == blank) {
            Cand& e = next.get(self, h.node, 0, 0, &fresh);
            if (fresh) e.lm = trie.lm[h.node];
            e.pb = fresh ? log_add3(NEG_INF, h.pb + ps, h.pnb + ps)
                         : log_add3(e.pb, h.pb + ps, h.pnb + ps);
            continue;
          }
          const int last = h.node == 0 ? -1 : trie.token[h.node];
          if (s == last) {
            Cand& e = next.get(self, h.node, 0, 0, &fresh);  // *ss -> *s
            if (fresh) e.lm = trie.lm[h.node];
            e.pnb = log_add2(e.pnb, h.pnb + ps);
            Cand& e2 = extend(h.node, s);  // *s-s -> *ss
            e2.pnb = log_add2(e2.pnb, h.pb + ps);
          } else {
            const size_t before = next.items.size();
            Cand& e = extend(h.node, s);
            e.pnb = next.items.size() > before ? log_add2(h.pb + ps, h.pnb + ps)
                                               : log_add3(e.pnb, h.pb + ps, h.pnb + ps);
          }
        }
      }
      order.clear();
      for (int i = 0; i < (int)next.items.size(); ++i) {
        const Cand& c = next.items[i];
        double key = log_add2(c.pb, c.pnb);
        if (lm) {  // same association as the Python search, so ties break alike
          const int depth = c.node >= 0 ? trie.depth[c.node] : trie.depth[c.parent] + 1;
          key = key + lm_weight * c.lm + length_bonus * depth;
        }
        order.emplace_back(key, i);
      }
      std::stable_sort(order.begin(), order.end(),
                       [](const std::pair<double, int>& a, const std::pair<double, int>& c) {
                         return a.first > c.first;
                       });
      cur.clear();
      for (int i = 0; i < (int)order.size() && i < beam; ++i) {
        const Cand& c = next.items[order[i].second];
        cur.push_back({c.node >= 0 ? c.node : trie.child(c.parent, c.tok, c.lm), c.pb, c.pnb});
      }
    }
    std::vector<double> lm_total(cur.size(), 0.0);
    if (lm) {  // close each sentence with </s>, then order by the fused score
      order.clear();
      for (int i = 0; i < (int)cur.size(); ++i) {
        lm_total[i] = trie.lm[cur[i].node] + lm->score(trie, cur[i].node, eos);
        order.emplace_back(log_add2(cur[i].pb, cur[i].pnb) + lm_weight * lm_total[i] +
                               length_bonus * trie.depth[cur[i].node], i);
      }
      std::stable_sort(order.begin(), order.end(),
                       [](const std::pair<double, int>& a, const std::pair<double, int>& c) {
                         return a.first > c.first;
                       });
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
      const size_t o = (size_t)b * beam + i;
      out_lens[o] = (int32_t)seq.size();
      for (int q = 0; q < (int)seq.size(); ++q) out_tokens[o * max_len + q] = seq[q];
      out_scores[o] = log_add2(cur[i].pb, cur[i].pnb);
      if (out_lm) out_lm[o] = lm_total[i];
    }
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

// The same with LM fusion. The LM: `lm_order` tables (codes sorted ascending, ln P, ln
// back-off) of lm_count[n] entries; tokens are unit ids, bos/eos the ids of <s>/</s>.
// out_lm[b*beam+i]: the hypothesis' LM log-prob including </s>.
int wk_ctc_prefix_beam_search_lm(const float* topv, const int64_t* topi, const int32_t* lens,
                                 int B, int T, int K, int beam, int blank, int max_len,
                                 int32_t* out_tokens, int32_t* out_lens, double* out_scores,
                                 int32_t* out_count, int lm_order, int lm_bits,
                                 const int64_t* const* lm_codes, const double* const* lm_logp,
                                 const double* const* lm_bow, const int64_t* lm_count, int bos,
                                 int eos, double lm_weight, double length_bonus, double* out_lm) {
  if (lm_order < 1 || lm_order > 16) return 2;
  const NgramLM lm{lm_order, lm_bits, bos, lm_codes, lm_logp, lm_bow, lm_count};
  return search(topv, topi, lens, B, T, K, beam, blank, max_len, out_tokens, out_lens,
                out_scores, out_count, &lm, lm_weight, length_bonus, eos, out_lm);
}

}  // extern "C"
