"""CTC greedy search, CTC prefix beam search and attention-rescoring inputs.

The prefix beam search follows WeNet's `_ctc_prefix_beam_search` step for step (same
candidate order, same stable sort, log-add in double precision), so n-best lists and
their scores match WeNet's; it works on the encoder's top-k outputs, one utterance at a
time, and its inner loop is plain Python over at most beam x beam candidates per frame.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from wenet_triton.decode.native import advance_searches, new_search_state, prefix_beam_search_batch

NEG_INF = -float("inf")
Hyp = Tuple[Tuple[int, ...], float]


def ctc_greedy(topk_idx: np.ndarray, length: int, blank: int = 0) -> List[int]:
    """topk_idx (T, k) with the argmax in column 0 -> collapsed ids."""
    best = topk_idx[:length, 0]
    out, prev = [], -1
    for t in best.tolist():
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


def _log_add(a: float, b: float) -> float:
    # same arithmetic as WeNet's log_add([a, b]) so sort orders agree bit for bit
    m = a if a > b else b
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def _log_add3(a: float, b: float, c: float) -> float:
    m = max(a, b, c)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(math.exp(a - m) + math.exp(b - m) + math.exp(c - m))


def _extend(cur, syms, logps, blank: int) -> dict:
    """One frame of WeNet's prefix beam search: every (symbol, hypothesis) pair in WeNet's
    order -> {prefix: [p_blank_ending, p_nonblank_ending]} in first-insertion order."""
    nxt: dict = {}
    for s, ps in zip(syms, logps):
        for prefix, pb, pnb in cur:
            if s == blank:
                e = nxt.get(prefix)
                v = _log_add3(pb + ps, pnb + ps, NEG_INF)
                if e is None:
                    nxt[prefix] = [v, NEG_INF]
                else:
                    e[0] = _log_add3(e[0], pb + ps, pnb + ps)
                continue
            last = prefix[-1] if prefix else None
            if s == last:
                e = nxt.get(prefix)
                if e is None:
                    nxt[prefix] = [NEG_INF, pnb + ps]
                else:
                    e[1] = _log_add(e[1], pnb + ps)
                np_ = prefix + (s,)
                e = nxt.get(np_)
                if e is None:
                    nxt[np_] = [NEG_INF, pb + ps]
                else:
                    e[1] = _log_add(e[1], pb + ps)
            else:
                np_ = prefix + (s,)
                e = nxt.get(np_)
                if e is None:
                    nxt[np_] = [NEG_INF, _log_add(pb + ps, pnb + ps)]
                else:
                    e[1] = _log_add3(e[1], pb + ps, pnb + ps)
    return nxt


def ctc_prefix_beam_search(topk_logp: np.ndarray, topk_idx: np.ndarray, length: int,
                           beam_size: int = 10, blank: int = 0) -> List[Hyp]:
    """WeNet's CTC prefix beam search over per-frame top-k candidates.

    topk_logp/topk_idx: (T, k) with k >= beam_size, sorted descending per frame.
    Returns up to beam_size (prefix, log-prob) sorted best first.
    """
    cur: List[Tuple[Tuple[int, ...], float, float]] = [((), 0.0, NEG_INF)]
    lp = topk_logp[:length, :beam_size].astype(np.float64).tolist()
    ix = topk_idx[:length, :beam_size].tolist()
    for t in range(length):
        nxt = _extend(cur, ix[t], lp[t], blank)
        ranked = sorted(nxt.items(), key=lambda kv: _log_add(kv[1][0], kv[1][1]), reverse=True)
        cur = [(p, v[0], v[1]) for p, v in ranked[:beam_size]]
    return [(p, _log_add(pb, pnb)) for p, pb, pnb in cur]


def ctc_prefix_beam_search_lm(topk_logp: np.ndarray, topk_idx: np.ndarray, length: int, lm,
                              lm_weight: float, length_bonus: float = 0.0, beam_size: int = 10,
                              blank: int = 0) -> List[Tuple[Tuple[int, ...], float, float]]:
    """CTC prefix beam search with shallow fusion of a token n-gram LM (`lm.NgramLM`).

    Prefixes are ranked by ctc + lm_weight * lm + length_bonus * len, the LM scoring each
    new token as the prefix grows and </s> at the end. Returns up to beam_size
    (prefix, ctc log-prob, lm log-prob) best first; the CTC part is tracked exactly as in
    `ctc_prefix_beam_search`, so lm_weight 0 gives its n-best.
    """
    lm_cache = {(): (0.0, lm.start())}  # prefix -> (LM log-prob, LM state)

    def lm_entry(prefix):
        e = lm_cache.get(prefix)
        if e is None:
            total, state = lm_entry(prefix[:-1])
            lp, state = lm.step(state, prefix[-1])
            e = lm_cache[prefix] = (total + lp, state)
        return e

    def key(item):
        prefix, (pb, pnb) = item
        return _log_add(pb, pnb) + lm_weight * lm_entry(prefix)[0] + length_bonus * len(prefix)

    cur: List[Tuple[Tuple[int, ...], float, float]] = [((), 0.0, NEG_INF)]
    lp = topk_logp[:length, :beam_size].astype(np.float64).tolist()
    ix = topk_idx[:length, :beam_size].tolist()
    for t in range(length):
        ranked = sorted(_extend(cur, ix[t], lp[t], blank).items(), key=key, reverse=True)
        cur = [(p, v[0], v[1]) for p, v in ranked[:beam_size]]
    out = []
    for prefix, pb, pnb in cur:
        total, state = lm_entry(prefix)
        out.append((prefix, _log_add(pb, pnb), total + lm.logp(state, lm.eos)))
    out.sort(key=lambda h: h[1] + lm_weight * h[2] + length_bonus * len(h[0]), reverse=True)
    return out


def ctc_prefix_beam_search_batch(topk_logp: np.ndarray, topk_idx: np.ndarray, lens,
                                 beam_size: int = 10, blank: int = 0, lm=None,
                                 lm_weight: float = 0.0, length_bonus: float = 0.0) -> List[List]:
    """Batched search: the C++ implementation when it can be built, else the Python one.
    With an `lm.NgramLM`, hypotheses are (prefix, ctc, lm) ranked by the fused score."""
    lens = np.asarray(lens)
    out = prefix_beam_search_batch(topk_logp, topk_idx, lens, beam_size, blank, lm, lm_weight,
                                   length_bonus)
    if out is not None:
        return out
    if lm is not None:
        return [ctc_prefix_beam_search_lm(topk_logp[b], topk_idx[b], int(lens[b]), lm, lm_weight,
                                          length_bonus, beam_size, blank) for b in range(len(lens))]
    return [ctc_prefix_beam_search(topk_logp[b], topk_idx[b], int(lens[b]), beam_size, blank)
            for b in range(len(lens))]


class IncrementalSearch:
    """One live stream's CTC prefix beam search, fed its frames as they come
    (`advance_search_batch`); after any split of the frames its n-best is what
    `ctc_prefix_beam_search_batch` gives over all of them. The C++ search resumes where it
    stopped; without the library the frames are kept and searched again from the start."""
    def __init__(self):
        self.native = new_search_state()
        self.frames = 0
        self._lp: List[np.ndarray] = []
        self._ix: List[np.ndarray] = []


def advance_search_batch(searches: Sequence[IncrementalSearch], chunks, beam_size: int = 10,
                         blank: int = 0, lm=None, lm_weight: float = 0.0,
                         length_bonus: float = 0.0, threads: int = 1) -> List[List]:
    """chunks[b] = (log-probs (t, k), ids (t, k)): the next frames of searches[b] (t may be 0)
    -> each search's n-best after them (hypotheses as ctc_prefix_beam_search_batch's).
    threads > 1: the C++ searches of a large batch run in that many groups at once."""
    B = len(searches)
    if not B:
        return []
    K = max(c[0].shape[1] for c in chunks) if any(c[0].ndim == 2 for c in chunks) else beam_size
    T = max([len(c[0]) for c in chunks] + [1])
    lp = np.zeros((B, T, K), np.float32)
    ix = np.zeros((B, T, K), np.int64)
    lens = np.zeros(B, np.int32)
    for b, (p, x) in enumerate(chunks):
        n = len(p)
        if n:
            lp[b, :n], ix[b, :n] = p, x
        lens[b] = n
        searches[b].frames += n
    if all(s.native is not None for s in searches):
        return advance_searches([s.native for s in searches], lp, ix, lens, beam_size, blank, lm,
                                lm_weight, length_bonus, threads)
    for s, (p, x) in zip(searches, chunks):  # no C++ search: all frames again
        if len(p):
            s._lp.append(np.asarray(p, np.float32))
            s._ix.append(np.asarray(x, np.int64))
    out: List[List] = []
    for s in searches:
        if not s.frames:
            out.append(ctc_prefix_beam_search_batch(np.zeros((1, 1, K), np.float32),
                                                    np.zeros((1, 1, K), np.int64), [0], beam_size,
                                                    blank, lm, lm_weight, length_bonus)[0])
            continue
        out += ctc_prefix_beam_search_batch(np.concatenate(s._lp)[None], np.concatenate(s._ix)[None],
                                            [s.frames], beam_size, blank, lm, lm_weight, length_bonus)
    return out


def rescoring_inputs(nbest: Sequence[Sequence[Hyp]], beam_size: int, sos: int, eos: int
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pack n-best lists of a batch into the decoder's inputs.

    Lists shorter than beam_size (very short audio) are filled by repeating their last
    hypothesis; rescoring then cannot pick a filler over the original since ties keep the
    first index. Hypotheses are (ids, ctc score[, lm score]); ctc_score is the CTC part.
    Returns hyps_pad_sos_eos, hyps_lens_sos, r_hyps_pad_sos_eos, ctc_score.
    """
    B = len(nbest)
    filled = []
    for hyps in nbest:
        hyps = list(hyps) or [((), 0.0)]
        hyps += [hyps[-1]] * (beam_size - len(hyps))
        filled.append(hyps[:beam_size])
    max_len = max(len(h[0]) for hyps in filled for h in hyps)
    pad = np.full((B, beam_size, max_len + 2), eos, dtype=np.int64)
    rpad = np.full((B, beam_size, max_len + 2), eos, dtype=np.int64)
    lens = np.zeros((B, beam_size), dtype=np.int32)
    score = np.zeros((B, beam_size), dtype=np.float32)
    pad[:, :, 0] = sos
    rpad[:, :, 0] = sos
    for b, hyps in enumerate(filled):
        for i, (ids, sc, *_) in enumerate(hyps):
            n = len(ids)
            pad[b, i, 1:n + 1] = ids
            rpad[b, i, 1:n + 1] = ids[::-1]
            lens[b, i] = n + 1
            score[b, i] = sc
    return pad, lens, rpad, score


def pick_rescored(hyps: Sequence, scores: np.ndarray, best: int, lm_rescore_weight: float = 0.0
                  ) -> int:
    """Index of the rescored winner: the decoder's `best`, or with LM scores on the
    hypotheses, the argmax of its score + lm_rescore_weight * lm (fillers excluded)."""
    if not hyps or len(hyps[0]) < 3 or not lm_rescore_weight:
        return int(best)
    total = [float(scores[i]) + lm_rescore_weight * h[2] for i, h in enumerate(hyps)]
    return int(np.argmax(total))
