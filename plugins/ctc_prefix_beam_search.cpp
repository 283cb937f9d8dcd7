// CTC prefix beam search with WeNet's exact semantics (candidate order: top-k symbols outer,
// current hypotheses inner; stable sort by log-add(pb, pnb); log-add computed like WeNet's
// `log_add` in double precision). Prefixes live in a trie, so a prefix is one node id.
// Plain C ABI for ctypes; one call decodes a batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

namespace {

constexpr double NEG_INF = -std::numeric_limits<double>::infinity();

inline double log_add2(double a, double b) {
  const double m = a > b ? a : b;
  if (m == NEG_INF) return NEG_INF;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

inline double log_add3(double a, double b, double c) {
  double m = a > b ? a : b;
  m = m > c ? m : c;
  if (m == NEG_INF) return NEG_INF;
  return m + std::log(std::exp(a - m) + std::exp(b - m) + std::exp(c - m));
}

struct Trie {
  std::vector<int> parent, token;
  std::vector<std::unordered_map<int, int>> children;
  Trie() { parent.push_back(-1); token.push_back(-1); children.emplace_back(); }
  int child(int node, int tok) {
    auto it = children[node].find(tok);
    if (it != children[node].end()) return it->second;
    const int id = (int)parent.size();
    parent.push_back(node);
    token.push_back(tok);
    children.emplace_back();
    children[node].emplace(tok, id);
    return id;
  }
};

struct Hyp {
  int node;
  double pb, pnb;
};

// Accumulates next-step hypotheses in first-insertion order, like Python's dict.
struct NextHyps {
  std::vector<Hyp> items;
  std::unordered_map<int, int> index;
  Hyp& get(int node) {
    auto it = index.find(node);
    if (it != index.end()) return items[it->second];
    index.emplace(node, (int)items.size());
    items.push_back({node, NEG_INF, NEG_INF});
    return items.back();
  }
  bool has(int node) const { return index.count(node) > 0; }
};

}  // namespace

extern "C" {

// topv/topi: (B, T, K) per-frame top-K log-probs (descending) and token ids; lens: (B,).
// Outputs per utterance b, hypothesis i < out_count[b] (<= beam):
//   out_lens[b*beam+i], out_tokens[(b*beam+i)*max_len ...], out_scores[b*beam+i].
// Returns 0, or 1 if some prefix was longer than max_len (it is truncated).
int wk_ctc_prefix_beam_search(const float* topv, const int64_t* topi, const int32_t* lens,
                              int B, int T, int K, int beam, int blank, int max_len,
                              int32_t* out_tokens, int32_t* out_lens, double* out_scores,
                              int32_t* out_count) {
  int status = 0;
  const int width = beam < K ? beam : K;
  for (int b = 0; b < B; ++b) {
    Trie trie;
    std::vector<Hyp> cur{{0, 0.0, NEG_INF}};
    const int len = lens[b] < T ? lens[b] : T;
    for (int t = 0; t < len; ++t) {
      const float* v = topv + ((size_t)b * T + t) * K;
      const int64_t* ix = topi + ((size_t)b * T + t) * K;
      NextHyps next;
      for (int j = 0; j < width; ++j) {
        const int s = (int)ix[j];
        const double ps = (double)v[j];
        for (const Hyp& h : cur) {
          if (s == blank) {
            const bool fresh = !next.has(h.node);
            Hyp& e = next.get(h.node);
            e.pb = fresh ? log_add3(NEG_INF, h.pb + ps, h.pnb + ps)
                         : log_add3(e.pb, h.pb + ps, h.pnb + ps);
            continue;
          }
          const int last = h.node == 0 ? -1 : trie.token[h.node];
          if (s == last) {
            Hyp& e = next.get(h.node);  // *ss -> *s
            e.pnb = log_add2(e.pnb, h.pnb + ps);
            const int n = trie.child(h.node, s);  // *s-s -> *ss
            Hyp& e2 = next.get(n);
            e2.pnb = log_add2(e2.pnb, h.pb + ps);
          } else {
            const int n = trie.child(h.node, s);
            const bool fresh = !next.has(n);
            Hyp& e = next.get(n);
            e.pnb = fresh ? log_add2(h.pb + ps, h.pnb + ps) : log_add3(e.pnb, h.pb + ps, h.pnb + ps);
          }
        }
      }
      std::vector<std::pair<double, int>> order;
      order.reserve(next.items.size());
      for (int i = 0; i < (int)next.items.size(); ++i)
        order.emplace_back(log_add2(next.items[i].pb, next.items[i].pnb), i);
      std::stable_sort(order.begin(), order.end(),
                       [](const std::pair<double, int>& a, const std::pair<double, int>& c) {
                         return a.first > c.first;
                       });
      cur.clear();
      for (int i = 0; i < (int)order.size() && i < beam; ++i) cur.push_back(next.items[order[i].second]);
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
    }
  }
  return status;
}

}  // extern "C"
