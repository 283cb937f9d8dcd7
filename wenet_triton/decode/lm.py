"""Token n-gram language model for CTC prefix beam search (shallow fusion).

Built from training text with interpolated modified Kneser-Ney smoothing, stored as a
standard ARPA file (log10 probabilities and back-off weights; tokens are the model's units,
so an ARPA file made by KenLM's `lmplz` over space-separated units works too).

Counting is vectorised: an n-gram of token ids is packed into one int64 (`bits` per
token), so counts, continuation counts and the interpolation are numpy sorts and searches.
Pruning drops n-grams of order >= 2 seen fewer than `min_count[n]` times and renormalises
the back-off weights, so every context's distribution still sums to one.
"""
from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

BOS, EOS = "<s>", "</s>"
LN10 = math.log(10.0)
OOV_LOGP = math.log(1e-10)  # same constant in the C++ search


class LMError(ValueError):
    pass


def text_to_ids(paths: Sequence[str], units: Sequence[str], with_ids: bool = False
                ) -> Tuple[List[List[int]], int]:
    """Sentences of unit ids from text files (one sentence per line, split into characters;
    spaces are dropped). Returns (sentences, count of characters outside the units, which
    become <unk>). Only character units are supported."""
    ids = {u: i for i, u in enumerate(units)}
    long = [u for u in units if len(u) > 1 and not (u.startswith("<") and u.endswith(">"))]
    if len(long) > len(units) // 10:
        raise LMError(f"the units look like word pieces ({long[:3]}...): `lm` builds "
                      "character LMs only; build an ARPA over these units elsewhere")
    unk_id = ids.get("<unk>", 1)
    sents, unk = [], 0
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if with_ids:  # drop the utterance id
                        line = (line.split(maxsplit=1) + [""])[1]
                    chars = [c for c in line if not c.isspace()]
                    unk += sum(c not in ids for c in chars)
                    if chars:
                        sents.append([ids.get(c, unk_id) for c in chars])
        except (OSError, UnicodeDecodeError) as e:
            raise LMError(f"cannot read text {path}: {e}") from None
    return sents, unk


# -- estimation ---------------------------------------------------------------------------------
def _pack(cols: Sequence[np.ndarray], bits: int) -> np.ndarray:
    code = np.zeros(len(cols[0]), np.int64)
    for c in cols:
        code = (code << bits) | c.astype(np.int64)
    return code


def _discounts(counts: np.ndarray) -> np.ndarray:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the count-of-counts (Chen & Goodman)."""
    n = [int(np.count_nonzero(counts == i)) for i in (1, 2, 3, 4)]
    if min(n) == 0:  # tiny corpora: fall back to one absolute discount
        return np.array([0.5, 0.5, 0.5])
    y = n[0] / (n[0] + 2 * n[1])
    d = np.array([1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
    return np.clip(d, 0.05, None)


@dataclass
class _Order:
    codes: np.ndarray                 # sorted packed n-grams (h..., w)
    logp: np.ndarray                  # interpolated ln P(w | h)
    raw: np.ndarray                   # occurrences, for pruning
    bow: Optional[np.ndarray] = None  # ln back-off weight of each n-gram as a context


def _suffix(codes: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The last n-1 tokens of packed n-grams."""
    return codes & ((1 << (bits * (n - 1))) - 1)


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Positions of `codes` in the sorted `table` (all must be there)."""
    pos = np.searchsorted(table, codes)
    if len(codes) and not np.all(table[np.minimum(pos, len(table) - 1)] == codes):
        raise AssertionError("lower-order n-gram missing")
    return pos


def estimate(sentences: Iterable[Sequence[int]], vocab_size: int, order: int = 4,
             min_count: Sequence[int] = (), progress=None) -> "NgramLM":
    """Interpolated modified Kneser-Ney n-gram model over token ids 0..vocab_size-1.

    sentences: token-id sequences without <s>/</s>. min_count[n-1]: the fewest occurrences
    an n-gram of order n >= 2 needs to be kept (non-decreasing; default 1).
    """
    bos, eos = vocab_size, vocab_size + 1
    bits = int(vocab_size + 1).bit_length()
    if bits * order > 60:
        raise LMError(f"order {order} with {vocab_size} tokens does not fit in 64-bit codes")
    mc = [max(1, int(x)) for x in min_count] + [1] * order
    if any(b < a for a, b in zip(mc[1:order], mc[2:order])):
        raise LMError(f"min_count must not decrease with the order: {mc[:order]}")
    seqs = [np.concatenate([[bos], np.asarray(s, np.int64), [eos]]) for s in sentences]
    if not seqs:
        raise LMError("no training sentences")
    flat = np.concatenate(seqs)
    sent = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    raw = []  # (codes, occurrences) per order; <s> is never predicted
    for n in range(1, order + 1):
        m = len(flat) - n + 1
        ok = (sent[:m] == sent[n - 1:n - 1 + m]) & (flat[n - 1:n - 1 + m] != bos)
        codes, cnt = np.unique(_pack([flat[i:i + m][ok] for i in range(n)], bits),
                               return_counts=True)
        if n == 1:  # every token gets a unigram, seen or not
            allc = np.arange(vocab_size + 2, dtype=np.int64)
            full = np.zeros(len(allc), np.int64)
            full[codes] = cnt
            keep = allc != bos
            codes, cnt = allc[keep], full[keep]
        raw.append((codes, cnt))
        if progress:
            progress(f"{n}-grams: {len(codes):,}")
    orders: List[_Order] = []
    for n in range(1, order + 1):
        codes, cnt = raw[n - 1]
        if n == order:
            c = cnt.astype(np.float64)
        else:  # continuation counts: distinct left extensions; raw counts after <s>
            su, sc = np.unique(_suffix(raw[n][0], n + 1, bits), return_counts=True)
            c = np.zeros(len(codes))
            c[_lookup(codes, su)] = sc
            after_bos = (codes >> (bits * (n - 1))) == bos if n > 1 else np.zeros(len(codes), bool)
            c[after_bos] = cnt[after_bos]
        D = _discounts(c.astype(np.int64))
        disc = np.minimum(np.where(c >= 3, D[2], np.where(c >= 2, D[1], D[0])), c)
        _, inv = np.unique(codes >> bits, return_inverse=True)  # contexts
        tot = np.bincount(inv, weights=c)
        gamma = np.bincount(inv, weights=disc) / np.maximum(tot, 1e-300)
        lower = (np.full(len(codes), 1.0 / (vocab_size + 1)) if n == 1 else
                 np.exp(orders[-1].logp[_lookup(orders[-1].codes, _suffix(codes, n, bits))]))
        with np.errstate(divide="ignore"):
            p = (c - disc) / np.maximum(tot[inv], 1e-300) + gamma[inv] * lower
        orders.append(_Order(codes, np.log(p), cnt))
    # <s> as a unigram context: probability 0, back-off weight set below
    o1 = orders[0]
    at = int(np.searchsorted(o1.codes, bos))
    orders[0] = _Order(np.insert(o1.codes, at, bos), np.insert(o1.logp, at, -np.inf),
                       np.insert(o1.raw, at, len(seqs)))
    for n in range(2, order + 1):
        o = orders[n - 1]
        keep = o.raw >= mc[n - 1]
        orders[n - 1] = _Order(o.codes[keep], o.logp[keep], o.raw[keep])
    _set_backoffs(orders, bits)
    return NgramLM(orders, bits, vocab_size)


def _set_backoffs(orders: List[_Order], bits: int) -> None:
    """bow(h) = (1 - sum of kept P(w|h)) / (1 - sum of P(w|h') over the same w): every
    context's distribution sums to one after pruning."""
    for n in range(1, len(orders)):
        lo, hi = orders[n - 1], orders[n]
        pos = _lookup(lo.codes, hi.codes >> bits)                            # contexts h
        lower = lo.logp[_lookup(lo.codes, _suffix(hi.codes, n + 1, bits))]  # P(w | h')
        p_hi = np.bincount(pos, weights=np.exp(hi.logp), minlength=len(lo.codes))
        p_lo = np.bincount(pos, weights=np.exp(lower), minlength=len(lo.codes))
        bow = np.zeros(len(lo.codes))
        has = np.bincount(pos, minlength=len(lo.codes)) > 0
        bow[has] = (np.log(np.clip(1 - p_hi[has], 1e-10, None))
                    - np.log(np.clip(1 - p_lo[has], 1e-10, None)))
        lo.bow = bow
    orders[-1].bow = np.zeros(len(orders[-1].codes))


def _open_text_out(path: str):
    """Text writer; gzip (without a timestamp, so equal content gives equal bytes) for .gz."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


# -- the model ----------------------------------------------------------------------------------
class NgramLM:
    """Back-off n-gram model over the acoustic model's unit ids; scores in natural log.

    Tokens: unit ids 0..vocab_size-1, then <s> = vocab_size and </s> = vocab_size + 1.
    A state is the tuple of the last (order - 1) tokens.
    """

    def __init__(self, orders: List[_Order], bits: int, vocab_size: int):
        self.order, self.bits, self.vocab_size = len(orders), bits, vocab_size
        self.bos, self.eos = vocab_size, vocab_size + 1
        self._orders = orders
        self._dicts = self._tables = None

    def __repr__(self):
        return f"NgramLM(order={self.order}, ngrams={[len(o.codes) for o in self._orders]})"

    def tables(self):
        """Per order: packed codes (int64, sorted), ln P, ln back-off (float64), and the
        entry counts: the layout of the C++ search (csrc/ctc_prefix_beam_search.cpp)."""
        if self._tables is None:
            c = [np.ascontiguousarray(o.codes, np.int64) for o in self._orders]
            lp = [np.ascontiguousarray(o.logp, np.float64) for o in self._orders]
            bw = [np.ascontiguousarray(o.bow, np.float64) for o in self._orders]
            self._tables = (c, lp, bw, np.array([len(x) for x in c], np.int64))
        return self._tables

    def _lookup_tables(self):
        # dicts for the Python search, made on first use
        if self._dicts is None:
            self._dicts = ([dict(zip(o.codes.tolist(), o.logp.tolist())) for o in self._orders],
                           [{c: b for c, b in zip(o.codes.tolist(), o.bow.tolist()) if b != 0.0}
                            for o in self._orders])
        return self._dicts

    def start(self) -> Tuple[int, ...]:
        return (self.bos,)

    def _code(self, toks: Sequence[int]) -> int:
        c = 0
        for t in toks:
            c = (c << self.bits) | t
        return c

    def logp(self, state: Sequence[int], token: int) -> float:
        """ln P(token | state) with back-off."""
        acc, bits = 0.0, self.bits
        logp, bow = self._lookup_tables()
        ctx = tuple(state)[-(self.order - 1):] if self.order > 1 else ()
        for k in range(len(ctx), -1, -1):
            h = self._code(ctx[len(ctx) - k:])
            p = logp[k].get((h << bits) | token)
            if p is not None:
                return acc + p
            if k:
                acc += bow[k - 1].get(h, 0.0)
        return acc + OOV_LOGP  # a token outside the LM

    def step(self, state: Tuple[int, ...], token: int) -> Tuple[float, Tuple[int, ...]]:
        """(ln P(token | state), next state)."""
        s = (state + (token,))[-(self.order - 1):] if self.order > 1 else ()
        return self.logp(state, token), s

    def sentence_logp(self, tokens: Sequence[int], eos: bool = True) -> float:
        st, total = self.start(), 0.0
        for t in tokens:
            lp, st = self.step(st, t)
            total += lp
        return total + (self.logp(st, self.eos) if eos else 0.0)

    # -- ARPA ---------------------------------------------------------------------------------
    def write_arpa(self, path: str, units: Sequence[str]) -> None:
        """Standard ARPA (log10); gzip when the name ends in .gz."""
        if len(units) != self.vocab_size:
            raise LMError(f"{len(units)} units given, the LM has {self.vocab_size}")
        names, bits, mask = list(units) + [BOS, EOS], self.bits, (1 << self.bits) - 1
        with _open_text_out(path) as f:
            f.write("\\data\\\n")
            for n, o in enumerate(self._orders, 1):
                f.write(f"ngram {n}={len(o.codes)}\n")
            for n, o in enumerate(self._orders, 1):
                f.write(f"\n\\{n}-grams:\n")
                for c, lp, b in zip(o.codes.tolist(), (o.logp / LN10).tolist(),
                                    (o.bow / LN10).tolist()):
                    toks = [names[(c >> (bits * (n - 1 - i))) & mask] for i in range(n)]
                    lp = -99.0 if lp == -np.inf else lp
                    line = f"{lp:.6f}\t{' '.join(toks)}"
                    f.write(line + (f"\t{b:.6f}\n" if n < self.order else "\n"))
            f.write("\n\\end\\\n")

    @classmethod
    def from_arpa(cls, path: str, units: Sequence[str]) -> "NgramLM":
        """Read an ARPA file (plain or .gz) whose tokens are the model's units; n-grams with
        other tokens are dropped (an LM from another unit set is refused)."""
        ids = {u: i for i, u in enumerate(units)}
        V = len(units)
        ids[BOS], ids[EOS] = V, V + 1
        bits = int(V + 1).bit_length()
        opener = gzip.open if path.endswith(".gz") else open
        try:
            f = opener(path, "rt", encoding="utf-8")
            lines = iter(f.read().splitlines())
            f.close()
        except (OSError, UnicodeDecodeError) as e:
            raise LMError(f"cannot read ARPA file {path}: {e}") from None
        counts: Dict[int, int] = {}
        sections: Dict[int, List[str]] = {}
        cur = None
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line.startswith("ngram ") and cur is None:
                n, _, c = line[6:].partition("=")
                counts[int(n)] = int(c)
            elif line.startswith("\\") and line.endswith("-grams:"):
                cur = int(line[1:line.index("-")])
                sections[cur] = []
            elif line == "\\end\\":
                break
            elif cur is not None:
                sections[cur].append(line)
        if not counts or sorted(sections) != list(range(1, len(counts) + 1)):
            raise LMError(f"{path}: not an ARPA file (need \\data\\ counts and \\N-grams: sections)")
        if bits * len(counts) > 60:
            raise LMError(f"{path}: order {len(counts)} is too high for {V} units")
        orders, known, total = [], 0, 0
        for n in range(1, len(counts) + 1):
            codes, lps, bows = [], [], []
            for line in sections[n]:
                parts = line.split()
                total += 1
                try:
                    c = 0
                    for t in parts[1:1 + n]:
                        c = (c << bits) | ids[t]
                except KeyError:
                    continue
                known += 1
                codes.append(c)
                lps.append(float(parts[0]) * LN10)
                bows.append(float(parts[1 + n]) * LN10 if len(parts) > 1 + n else 0.0)
            codes = np.asarray(codes, np.int64)
            srt = np.argsort(codes, kind="stable")
            lp = np.asarray(lps)[srt]
            lp[lp <= -99 * LN10] = -np.inf
            orders.append(_Order(codes[srt], lp, np.zeros(len(codes), np.int64),
                                 np.asarray(bows)[srt]))
        if known < total / 2:
            raise LMError(f"{path}: only {known} of {total} n-grams use this model's units")
        return cls(orders, bits, V)
