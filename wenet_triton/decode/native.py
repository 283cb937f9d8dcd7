"""The C++ CTC prefix beam search (csrc/ctc_prefix_beam_search.cpp), loaded with ctypes:
prebuilt ($WENET_TRITON_PREBUILT: the Docker image) or compiled with the system C++ compiler on
first use into the cache. If neither works the pure-Python search (same results, ~10x
slower; much slower with an LM) is used instead, with a warning."""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np

from wenet_triton.paths import build_native, cache_root, prebuilt_dir, source_digest

SOURCE = "ctc_prefix_beam_search.cpp"
BLOCK_SOURCE = "ctc_search_block.h"  # the GPU search's algorithm, also compiled into the library

log = logging.getLogger(__name__)
_LIB = None
_FAILED = False


def _build() -> Optional[str]:
    """The library for this source: prebuilt ($WENET_TRITON_PREBUILT, the Docker image), else
    compiled once into the cache by csrc/build.sh (named by the source's hash)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    name = f"libctc_search_{source_digest(SOURCE, BLOCK_SOURCE)}.so"
    pre = prebuilt_dir()
    if pre and os.path.exists(os.path.join(pre, name)):
        return os.path.join(pre, name)
    out = os.path.join(cache_root(), "native", name)
    if os.path.exists(out):
        return out
    if not cxx:
        return None
    log.info("compiling %s -> %s", SOURCE, out)
    build_native("search", out, capture=True, env={"CXX": cxx})  # writes atomically: Triton instances may race
    return out


def lib():
    global _LIB, _FAILED
    if _LIB is None and not _FAILED:
        try:
            path = _build()
            if path is None:
                raise OSError("no C++ compiler")
            L = ctypes.CDLL(path)
            P, I = ctypes.c_void_p, ctypes.c_int
            L.wk_ctc_prefix_beam_search.argtypes = [P, P, P, I, I, I, I, I, I, P, P, P, P]
            L.wk_ctc_prefix_beam_search.restype = I
            L.wk_ctc_prefix_beam_search_lm.argtypes = [P, P, P, I, I, I, I, I, I, P, P, P, P, P, I,
                                                       ctypes.c_double, ctypes.c_double, P]
            L.wk_ctc_prefix_beam_search_lm.restype = I
            L.wk_lm_create.argtypes = [I, I, I, P, P, P, P]
            L.wk_lm_create.restype = P
            L.wk_lm_free.argtypes = [P]
            L.wk_search_new.argtypes = []
            L.wk_search_new.restype = P
            L.wk_search_free.argtypes = [P]
            L.wk_search_frames.argtypes = [P]
            L.wk_search_frames.restype = I
            L.wk_search_advance.argtypes = [P, P, P, P, I, I, I, I, I, I, P, P, P, P, P, I,
                                            ctypes.c_double, ctypes.c_double, P]
            L.wk_search_advance.restype = I
            L.wk_ctc_search_emulated.argtypes = [P, P, P, I, I, I, I, I, I, P, P, P, P, P, P, I,
                                                 ctypes.c_double, ctypes.c_double, P]
            L.wk_ctc_search_emulated.restype = I
            L.wk_lm_table_size.argtypes = [P, I]
            L.wk_lm_table_size.restype = ctypes.c_int64
            L.wk_lm_table.argtypes = [P, I, P, P, P]
            _LIB = L
        except (OSError, subprocess.CalledProcessError) as e:
            log.warning("native CTC prefix beam search unavailable (%s); using Python", e)
            _FAILED = True
    return _LIB


def _ptr(a: Optional[np.ndarray]):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def _batch_buffers(topv, topi, lens, beam: int, with_lm: bool):
    """A one-call batch search's contiguous inputs, its dims (B, T, K, max_len = T) and zeroed
    outputs (tokens, lens, scores, count), plus LM scores or None."""
    topv = np.ascontiguousarray(topv, dtype=np.float32)
    topi = np.ascontiguousarray(topi, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int32)
    B, T, K = topv.shape
    max_len = max(T, 1)
    out = (np.zeros((B, beam, max_len), np.int32), np.zeros((B, beam), np.int32),
           np.zeros((B, beam), np.float64), np.zeros(B, np.int32))
    return (topv, topi, lens), (B, T, K, max_len), out, np.zeros((B, beam), np.float64) if with_lm else None


def prefix_beam_search_batch(topv: np.ndarray, topi: np.ndarray, lens: np.ndarray, beam: int,
                             blank: int = 0, lm=None, lm_weight: float = 0.0,
                             length_bonus: float = 0.0) -> Optional[List[List[tuple]]]:
    """(B,T,K) top-k log-probs/ids -> n-best per utterance, or None without the library.

    Hypotheses are (tokens, ctc log-prob), or with an `lm.NgramLM` (tokens, ctc, lm log-prob)
    ranked by the fused score."""
    L = lib()
    if L is None:
        return None
    inputs, (B, T, K, max_len), out, lm_scores = _batch_buffers(topv, topi, lens, beam, lm is not None)
    args = [*map(_ptr, inputs), B, T, K, beam, blank, max_len, *map(_ptr, out)]
    if lm is None:
        L.wk_ctc_prefix_beam_search(*args)
    else:
        L.wk_ctc_prefix_beam_search_lm(*args, _lm_handle(L, lm), lm.eos, lm_weight, length_bonus,
                                       _ptr(lm_scores))
    return nbest_lists(*out, lm_scores)


def nbest_lists(tokens: np.ndarray, out_lens: np.ndarray, scores: np.ndarray, count: np.ndarray,
                lm_scores: Optional[np.ndarray] = None) -> List[List[tuple]]:
    """The searches' output arrays (tokens (B, beam, L), lens and scores (B, beam), count (B,),
    LM log-probs (B, beam) or None) -> per utterance [(tokens, ctc[, lm]), ...]."""
    counts, lengths, sc = count.tolist(), out_lens.tolist(), scores.tolist()
    if lm_scores is None:
        return [[(tuple(tokens[b, i, :lengths[b][i]].tolist()), sc[b][i]) for i in range(counts[b])]
                for b in range(len(counts))]
    lms = lm_scores.tolist()
    return [[(tuple(tokens[b, i, :lengths[b][i]].tolist()), sc[b][i], lms[b][i])
             for i in range(counts[b])] for b in range(len(counts))]


def emulated_gpu_search_batch(topv: np.ndarray, topi: np.ndarray, lens: np.ndarray, beam: int,
                              blank: int = 0, lm=None, lm_weight: float = 0.0,
                              length_bonus: float = 0.0) -> Optional[List[List[tuple]]]:
    """The GPU search's code (csrc/ctc_search_block.h) run on the CPU, one utterance after the
    other by one "thread": the kernel's results without a GPU (tests). None without the library."""
    L = lib()
    if L is None:
        return None
    inputs, (B, T, K, max_len), out, lm_scores = _batch_buffers(topv, topi, lens, beam, lm is not None)
    status = np.zeros(B, np.int32)
    tables = arrays = None
    if lm is not None:  # the tables the GPU search gets, over host memory
        arrays = lm_gpu_tables(lm)
        tables = lm_tables(lm, [a.ctypes.data for a in arrays[:3]], *arrays[3:])
    L.wk_ctc_search_emulated(*map(_ptr, inputs), B, T, K, beam, blank, max_len, *map(_ptr, out), _ptr(status),
                             None if tables is None else ctypes.byref(tables),
                             lm.eos if lm is not None else 0, lm_weight, length_bonus, _ptr(lm_scores))
    return nbest_lists(*out, lm_scores)


class LMTables(ctypes.Structure):
    """wks::LMTables (csrc/ctc_search_block.h): an LM's tables as the GPU search reads them."""
    _fields_ = [("order", ctypes.c_int), ("bits", ctypes.c_int), ("bos", ctypes.c_int),
                ("keys", ctypes.c_void_p), ("logp", ctypes.c_void_p), ("bow", ctypes.c_void_p),
                ("offset", ctypes.c_int64 * 16), ("mask", ctypes.c_uint64 * 16)]


def lm_tables(lm, addresses: List[int], offsets: np.ndarray, masks: np.ndarray) -> LMTables:
    """The LMTables of an NgramLM whose lm_gpu_tables keys / ln P / ln back-off lie at
    `addresses` (host arrays or device tensors)."""
    t = LMTables(lm.order, lm.bits, lm.bos, *addresses)
    for n in range(lm.order):
        t.offset[n] = int(offsets[n])
        t.mask[n] = int(masks[n])
    return t


def lm_gpu_tables(lm) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An NgramLM's hash tables as the C++ search builds them, for the GPU search: keys (int64,
    -1 empty), ln P, ln back-off (all orders concatenated), each order's offset and mask."""
    L = lib()
    if L is None:
        raise RuntimeError("the GPU search's LM tables are built by the C++ search library, "
                           "which is not available (no C++ compiler?)")
    h = _lm_handle(L, lm)
    sizes = [int(L.wk_lm_table_size(h, n)) for n in range(1, lm.order + 1)]
    total = sum(sizes)
    keys, logp, bow = np.empty(total, np.int64), np.empty(total, np.float64), np.empty(total, np.float64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    for n, (o, size) in enumerate(zip(offsets.tolist(), sizes), start=1):
        L.wk_lm_table(h, n, _ptr(keys[o:]), _ptr(logp[o:]), _ptr(bow[o:]))
    masks = np.array(sizes, np.uint64) - np.uint64(1)
    return keys, logp, bow, offsets, masks


class SearchState:
    """A C++ prefix beam search in progress (one live stream): fed frames as they come by
    `advance_searches`, it ends where one search over all its frames would."""
    def __init__(self, L):
        self.L = L
        self.ptr = L.wk_search_new()
        # the longest prefix in its beam after the last call: a frame extends a prefix by one
        # token at most, so after n more frames none is longer than longest + n
        self.longest = 0

    @property
    def frames(self) -> int:
        return int(self.L.wk_search_frames(self.ptr))

    def __del__(self):
        if getattr(self, "ptr", None):
            self.L.wk_search_free(self.ptr)
            self.ptr = None


def new_search_state() -> Optional[SearchState]:
    """A resumable search state, or None without the library."""
    L = lib()
    return None if L is None else SearchState(L)


# Fewest streams worth a thread of their own in advance_searches (a resumed 640 ms chunk costs
# ~0.1-0.4 ms of search; handing a group to a thread costs tens of microseconds).
MIN_GROUP = 4
_POOLS: Dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def resolve_threads(n: int) -> int:
    """A thread count for advance_searches: n itself, or with n <= 0 os.cpu_count() (at most 8)."""
    return int(n) if int(n) > 0 else max(1, min(8, os.cpu_count() or 1))


def _pool(n: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        p = _POOLS.get(n)
        if p is None:
            p = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="ctc-search")
        return p


def _groups(B: int, threads: int) -> List[tuple]:
    """[start, end) row ranges: up to `threads` groups of at least MIN_GROUP rows, sizes
    differing by at most one."""
    g = max(1, min(threads, B // MIN_GROUP))
    q, r = divmod(B, g)
    bounds = [0]
    for i in range(g):
        bounds.append(bounds[-1] + q + (i < r))
    return list(zip(bounds[:-1], bounds[1:]))


def advance_searches(states, topv: np.ndarray, topi: np.ndarray, lens: np.ndarray, beam: int,
                     blank: int = 0, lm=None, lm_weight: float = 0.0,
                     length_bonus: float = 0.0, threads: int = 1) -> List[List[tuple]]:
    """Feed states[b] the next lens[b] frames of row b of (B,T,K) top-k log-probs/ids (0: none)
    -> each state's n-best after them, as prefix_beam_search_batch gives.

    threads > 1: the rows are split into up to that many groups (MIN_GROUP rows at least) and
    the groups searched at once on a thread pool (the C++ call releases the GIL; each state
    is its own, the LM is read-only): the same results as one call.

    The output buffer holds prefixes of up to max(longest + new frames) tokens (each state's
    longest prefix so far, `SearchState.longest`), not the stream's frame count: a call costs
    O(new frames + prefix length), not O(frames so far)."""
    L = lib()
    topv = np.ascontiguousarray(topv, dtype=np.float32)
    topi = np.ascontiguousarray(topi, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int32)
    B, T, K = topv.shape
    max_len = max([s.longest + int(n) for s, n in zip(states, lens.tolist())] + [1])
    tokens = np.zeros((B, beam, max_len), np.int32)
    out_lens = np.zeros((B, beam), np.int32)
    scores = np.zeros((B, beam), np.float64)
    count = np.zeros(B, np.int32)
    lm_scores = np.zeros((B, beam), np.float64) if lm is not None else None
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    handle = _lm_handle(L, lm) if lm is not None else None
    eos = lm.eos if lm is not None else 0

    def run(a: int, b: int) -> int:  # rows a..b-1: row slices of C-contiguous arrays are contiguous
        ptrs = (ctypes.c_void_p * (b - a))(*[s.ptr for s in states[a:b]])
        return L.wk_search_advance(ptrs, p(topv[a:b]), p(topi[a:b]), p(lens[a:b]), b - a, T, K,
                                   beam, blank, max_len, p(tokens[a:b]), p(out_lens[a:b]),
                                   p(scores[a:b]), p(count[a:b]), handle, eos, lm_weight,
                                   length_bonus, p(lm_scores[a:b]) if lm is not None else None)

    threads = resolve_threads(threads)
    groups = _groups(B, threads) if B else [(0, 0)]
    if len(groups) == 1:
        truncated = run(0, B)
    else:  # the caller searches the first group itself
        futures = [_pool(threads - 1).submit(run, a, b) for a, b in groups[1:]]
        truncated = run(*groups[0])
        for f in futures:
            truncated |= f.result()
    if truncated:  # cannot happen (see SearchState.longest); emit again (0 new frames), unbounded
        lens = np.zeros(B, np.int32)
        max_len = max([s.frames for s in states] + [1])
        tokens = np.zeros((B, beam, max_len), np.int32)
        run(0, B)
    for s, ls in zip(states, out_lens.tolist()):
        s.longest = max(ls)
    return nbest_lists(tokens, out_lens, scores, count, lm_scores)


class _LMHandle:
    """The C++ copy of an NgramLM (hash tables), freed with it."""
    def __init__(self, L, lm):
        codes, logp, bow, sizes = lm.tables()
        ptrs = lambda arrays: (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])  # noqa: E731
        self.L = L
        self.ptr = L.wk_lm_create(lm.order, lm.bits, lm.bos, ptrs(codes), ptrs(logp), ptrs(bow),
                                  sizes.ctypes.data_as(ctypes.c_void_p))
        if not self.ptr:
            raise ValueError(f"LM order {lm.order} is not supported (1-16)")

    def __del__(self):
        if getattr(self, "ptr", None):
            self.L.wk_lm_free(self.ptr)


def _lm_handle(L, lm) -> int:
    h = getattr(lm, "_native", None)
    if h is None or h.L is not L:
        h = lm._native = _LMHandle(L, lm)
    return h.ptr
