"""The CTC head in one kernel (Triton-lang): the output projection, log-softmax and top-k of
each encoder frame, x (rows, d) -> the k best log-probabilities and their token ids, without
the (rows, vocabulary) logits ever reaching memory.

Why: the engine's CTC head is an fp32 (TF32) GEMM writing the logits (32,768 x 4,240 fp32 =
556 MB at 64 x 20 s) and kernels.log_softmax_topk reading them back: 0.26 + 0.69 ms of the
encoder's ~12 ms on an H200 (benchmarks/results/h200_2026-12-02d). Here a program takes BM
frames and walks the vocabulary in BN-wide tiles: the tile's logits on the tensor cores
(fp32 accumulator), an online log-sum-exp, and a running top-k per frame (k slots, unsorted:
while a tile holds a logit above a frame's current k-th best, the tile's largest replaces
the smallest slot; after the first tiles this rarely happens). At the end the k slots are
sorted (value descending, then token id ascending) and shifted by the log-sum-exp.

Only the top-k path (the engine's default: want_ctc_log_probs off); a caller that wants the
full log-probabilities keeps the GEMM + log_softmax_topk. Values: products of the 16-bit
frames and weights are exact in fp32 and summed in fp32 (as the TF32 GEMM over the same
values, in another order), bias fp32; equal values keep the smaller token id first.

Used by the `torch_cuda` engine from MIN_ROWS frames (a batch): on an H200 (2026-12-03,
benchmarks/results/h200_2026-12-03c, in CUDA graphs, k 10, `python3 -m benchmarks.ffn_fused_ab`
as `ctc_head`) 618 vs 972 us at 32,768 frames (64 x 20 s), but 226 vs 151 at 4,096 and 220 vs
31 at 256: each program walks the whole vocabulary, so few frames leave most SMs idle (the
vocabulary is not split over programs as in triton_vocab). `WENET_TRITON_FUSED_CTC=0` turns
it off. For few frames there is a split form (session 22): each 16-frame tile's vocabulary is
cut into slices of whole tiles (splits_for: ~256 programs), each slice keeps its k best and its
log-sum-exp state, and a second kernel merges them (same order: value, then smaller id). At
1 x 10 s it would replace the fp32 GEMM (~9 us) + log_softmax_topk (~20 us at 250 frames) of
the profile. Measured on an H200 (session 23, benchmarks/results/h200_2026-12-04b): exact, but
no faster than the unfused pair at 1-8 utterances of 5-20 s within the round-to-round spread
(1 x 10 s encoder 1.03-1.07 ms either way): it stays opt-in (`WENET_TRITON_CTC_SPLIT=1`).
Checked in Triton's CPU interpreter (tests/test_triton_gemm.py) and against the unfused pair
on a GPU (tests/test_gpu.py).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Tuple

import torch

from wenet_triton.engines.triton_plan import forced_plan, pow2, row_tile

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None
if triton is not None:  # the logits tile + online log-sum-exp step, shared with the vocabulary kernel
    from wenet_triton.engines.triton_vocab import _logits_lse_step


class Plan(NamedTuple):
    bm: int
    bn: int
    warps: int
    stages: int


DEFAULT = Plan(64, 128, 4, 2)
SPLIT_DEFAULT = Plan(16, 128, 4, 2)  # few frames: 16-frame tiles, the vocabulary split (splits_for)
SPLIT_PROGRAMS = 256                 # programs the split aims at (an H200 has 132 SMs)
MERGE_ROWS = 16
# below MIN_ROWS frames, the split-vocabulary form (two kernels) instead of the fp32 GEMM +
# kernels.log_softmax_topk: opt-in (WENET_TRITON_CTC_SPLIT=1; no faster on an H200, session 23)
SPLIT_ROWS = os.environ.get("WENET_TRITON_CTC_SPLIT", "0") not in ("0", "", "false")
# the engine takes the kernel from this many frames (between the measured 4,096, slower, and
# 16,384: 64 x 10 s, faster in the engine); WENET_TRITON_CTC_MIN_ROWS overrides it
MIN_ROWS = int(os.environ.get("WENET_TRITON_CTC_MIN_ROWS", "8192"))


FORCED: Optional[Plan] = forced_plan(Plan, "WENET_TRITON_CTC_PLAN")


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _order_key(v, i):
        """(fp32 value, int32 id) -> an int64 whose order is value ascending, then id
        descending (so a descending sort gives values high to low, equal values by id)."""
        bits = v.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # IEEE order as signed int
        return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - i).to(tl.int64)

    @triton.jit
    def _topk_walk(x, w_ptr, b_ptr, rd, d_ok, D, v_lo, v_hi,
                   K: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                   NUM_STAGES: tl.constexpr):
        """Vocabulary columns [v_lo, v_hi) of the BM frames x: the online log-sum-exp state (max,
        sum) and the k best logits with their ids in KP slots (unsorted; slots >= K hold -inf)."""
        rn0 = tl.arange(0, BN)
        slot = tl.arange(0, KP)
        mx = tl.full((BM,), float("-inf"), tl.float32)
        sm = tl.zeros((BM,), tl.float32)
        # the k slots (unsorted); slots >= K hold +inf so that they are never the smallest
        vals = tl.where(slot[None, :] < K, float("-inf"), float("inf")) + tl.zeros((BM, KP), tl.float32)
        ids = tl.zeros((BM, KP), tl.int32)
        for n0 in tl.range(v_lo, v_hi, BN, num_stages=NUM_STAGES):
            z, mx, sm = _logits_lse_step(x, w_ptr, b_ptr, n0 + rn0, n0 + rn0 < v_hi, rd, d_ok, D, mx, sm)
            kth = tl.min(vals, 1)  # the smallest of the k slots
            more = tl.max((tl.max(z, 1) > kth).to(tl.int32), 0)
            j = 0
            while (more > 0) & (j < K):
                zmax = tl.max(z, 1)
                zarg = tl.argmax(z, 1)  # ties: the smaller column, i.e. the smaller id
                take = zmax > kth  # strictly: an equal value of a smaller id stays
                low = tl.argmin(vals, 1)
                put = take[:, None] & (slot[None, :] == low[:, None])
                vals = tl.where(put, zmax[:, None], vals)
                ids = tl.where(put, (n0 + zarg)[:, None], ids)
                z = tl.where(rn0[None, :] == zarg[:, None], float("-inf"), z)
                kth = tl.min(vals, 1)
                more = tl.max((tl.max(z, 1) > kth).to(tl.int32), 0)
                j += 1
        return tl.where(slot[None, :] < K, vals, float("-inf")), ids, mx, sm

    @triton.jit
    def _store_sorted_topk(vals, ids, lse, val_ptr, idx_ptr, rm, m_ok, K: tl.constexpr, KP: tl.constexpr):
        """Sort candidates (BM, KP) by value descending, then id ascending; store the first K,
        shifted by the log-sum-exp, at rows rm."""
        slot = tl.arange(0, KP)
        keys = tl.sort(_order_key(vals, ids), 1, descending=True)
        ids = (0x7FFFFFFF - (keys & 0xFFFFFFFF)).to(tl.int32)
        ordered = (keys >> 32).to(tl.int32)
        vals = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        out = rm[:, None] * K + slot[None, :]
        ok = m_ok[:, None] & (slot[None, :] < K)
        tl.store(val_ptr + out, vals - lse[:, None], mask=ok)
        tl.store(idx_ptr + out, ids.to(tl.int64), mask=ok)

    @triton.jit
    def _ctc_topk_kernel(x_ptr, w_ptr, b_ptr, val_ptr, idx_ptr, R, V, D, sxm,
                         K: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         BD: tl.constexpr, NUM_STAGES: tl.constexpr):
        pm = tl.program_id(0)
        x, rm, rd, m_ok, d_ok = row_tile(x_ptr, pm, R, D, sxm, BM, BD)
        vals, ids, mx, sm = _topk_walk(x, w_ptr, b_ptr, rd, d_ok, D, 0, V, K, KP, BM, BN, NUM_STAGES)
        _store_sorted_topk(vals, ids, mx + tl.log(sm), val_ptr, idx_ptr, rm, m_ok, K, KP)

    @triton.jit
    def _ctc_topk_split_kernel(x_ptr, w_ptr, b_ptr, pval_ptr, pidx_ptr, pstat_ptr, R, V, D, V_PER, sxm,
                               K: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                               BD: tl.constexpr, NUM_STAGES: tl.constexpr):
        """Program (pm, ps): frames pm*BM.., vocabulary slice ps -> its KP candidates and its
        (max, sum) at [ps, row] of the partial buffers (S, R, KP) / (S, R, 2)."""
        pm = tl.program_id(0)
        ps = tl.program_id(1)
        x, rm, rd, m_ok, d_ok = row_tile(x_ptr, pm, R, D, sxm, BM, BD)
        v_lo = ps * V_PER
        vals, ids, mx, sm = _topk_walk(x, w_ptr, b_ptr, rd, d_ok, D, v_lo, tl.minimum(v_lo + V_PER, V),
                                       K, KP, BM, BN, NUM_STAGES)
        slot = tl.arange(0, KP)
        at = (ps * R + rm)[:, None] * KP + slot[None, :]
        tl.store(pval_ptr + at, vals, mask=m_ok[:, None])
        tl.store(pidx_ptr + at, ids, mask=m_ok[:, None])
        tl.store(pstat_ptr + (ps * R + rm) * 2, mx, mask=m_ok)
        tl.store(pstat_ptr + (ps * R + rm) * 2 + 1, sm, mask=m_ok)

    @triton.jit
    def _ctc_topk_merge_kernel(pval_ptr, pidx_ptr, pstat_ptr, val_ptr, idx_ptr, R, S_USED,
                               K: tl.constexpr, KP: tl.constexpr, S: tl.constexpr, BM: tl.constexpr):
        """Frames pm*BM..: the S_USED slices' candidates -> the k best, their log-sum-exp
        states -> one (S: S_USED rounded up to a power of two; the slices past S_USED are
        masked, as empty ones: no candidates, max -inf, sum 0)."""
        pm = tl.program_id(0)
        rm = pm * BM + tl.arange(0, BM)
        m_ok = rm < R
        c = tl.arange(0, S * KP)  # candidate c: slice c // KP, slot c % KP
        at = ((c // KP) * R)[None, :] * KP + rm[:, None] * KP + (c % KP)[None, :]
        c_ok = m_ok[:, None] & ((c // KP) < S_USED)[None, :]
        vals = tl.load(pval_ptr + at, mask=c_ok, other=float("-inf"))
        ids = tl.load(pidx_ptr + at, mask=c_ok, other=0)
        sl = tl.arange(0, S)
        st = (sl[None, :] * R + rm[:, None]) * 2
        s_ok = m_ok[:, None] & (sl < S_USED)[None, :]
        mx = tl.load(pstat_ptr + st, mask=s_ok, other=float("-inf"))
        sm = tl.load(pstat_ptr + st + 1, mask=s_ok, other=0.0)
        top = tl.max(mx, 1)
        total = tl.sum(tl.where(sm > 0, sm * tl.exp(mx - top[:, None]), 0.0), 1)
        _store_sorted_topk(vals, ids, top + tl.log(total), val_ptr, idx_ptr, rm, m_ok, K, S * KP)


def applies(x: torch.Tensor, k: int) -> bool:
    """CUDA frames in fp16 / bf16, d at most 512, k at most 64, at least MIN_ROWS frames (any
    number with SPLIT_ROWS: the split-vocabulary form below MIN_ROWS)."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.shape[-1] <= 512 and 1 <= k <= 64
            and x.numel() // x.shape[-1] >= (1 if SPLIT_ROWS else MIN_ROWS))


def splits_for(rows: int, V: int) -> int:
    """Slices of the vocabulary per frame tile: 1 from MIN_ROWS frames (enough tiles to fill
    the GPU); below, enough slices for ~SPLIT_PROGRAMS programs, each at least 2 tiles wide."""
    if rows >= MIN_ROWS:
        return 1
    tiles = max(1, -(-rows // SPLIT_DEFAULT.bm))
    most = max(1, V // (2 * SPLIT_DEFAULT.bn))
    return max(1, min(most, -(-SPLIT_PROGRAMS // tiles)))


def proj_log_softmax_topk(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int,
                          tiles: Optional[Plan] = None, split: Optional[int] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) 16-bit, w (V, d) in x's dtype, b (V,) fp32 -> (values (..., k) fp32, ids
    (..., k) int64): the k largest of log_softmax(x @ w.T + b), values descending. split: the
    vocabulary over this many programs per frame tile (None: splits_for)."""
    if triton is None:
        raise RuntimeError("the fused CTC head needs the triton package")
    d = x.shape[-1]
    V = w.shape[0]
    if w.shape[1] != d or b.shape != (V,) or not 1 <= k <= V:
        raise ValueError(f"CTC head: w {tuple(w.shape)} / b {tuple(b.shape)} / k {k} do not fit d {d}")
    x2 = x.reshape(-1, d)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    R = x2.shape[0]
    vals = torch.empty((R, k), dtype=torch.float32, device=x.device)
    ids = torch.empty((R, k), dtype=torch.int64, device=x.device)
    KP = max(2, pow2(k))
    S = splits_for(R, V) if split is None else split
    if R and S > 1:  # few frames: the vocabulary over S programs per frame tile, then a merge
        p = tiles or FORCED or SPLIT_DEFAULT
        v_per = triton.cdiv(triton.cdiv(V, S), p.bn) * p.bn  # whole tiles per slice
        S = triton.cdiv(V, v_per)
        # every slice's rows are written by the split kernel: no fill kernels before it
        pval = torch.empty((S, R, KP), dtype=torch.float32, device=x.device)
        pidx = torch.empty((S, R, KP), dtype=torch.int32, device=x.device)
        pstat = torch.empty((S, R, 2), dtype=torch.float32, device=x.device)
        _ctc_topk_split_kernel[(triton.cdiv(R, p.bm), S)](
            x2, w.contiguous(), b.contiguous(), pval, pidx, pstat, R, V, d, v_per, x2.stride(0),
            K=k, KP=KP, BM=p.bm, BN=p.bn, BD=pow2(d), NUM_STAGES=p.stages, num_warps=p.warps)
        _ctc_topk_merge_kernel[(triton.cdiv(R, MERGE_ROWS),)](
            pval, pidx, pstat, vals, ids, R, S, K=k, KP=KP, S=pow2(S), BM=MERGE_ROWS, num_warps=4)
    elif R:
        p = tiles or FORCED or DEFAULT
        _ctc_topk_kernel[(triton.cdiv(R, p.bm),)](
            x2, w.contiguous(), b.contiguous(), vals, ids, R, V, d, x2.stride(0),
            K=k, KP=KP, BM=p.bm, BN=p.bn, BD=pow2(d), NUM_STAGES=p.stages, num_warps=p.warps)
    lead = x.shape[:-1]
    return vals.view(*lead, k), ids.view(*lead, k)
