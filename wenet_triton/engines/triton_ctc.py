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
it off. Checked in Triton's CPU interpreter (tests/test_triton_gemm.py) and against the
unfused pair on a GPU (tests/test_gpu.py).
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
    def _ctc_topk_kernel(x_ptr, w_ptr, b_ptr, val_ptr, idx_ptr, R, V, D, sxm,
                         K: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                         BD: tl.constexpr, NUM_STAGES: tl.constexpr):
        pm = tl.program_id(0)
        x, rm, rd, m_ok, d_ok = row_tile(x_ptr, pm, R, D, sxm, BM, BD)
        rn0 = tl.arange(0, BN)
        slot = tl.arange(0, KP)
        mx = tl.full((BM,), float("-inf"), tl.float32)
        sm = tl.zeros((BM,), tl.float32)
        # the k slots (unsorted); slots >= K hold +inf so that they are never the smallest
        vals = tl.where(slot[None, :] < K, float("-inf"), float("inf")) + tl.zeros((BM, KP), tl.float32)
        ids = tl.zeros((BM, KP), tl.int32)
        for n0 in tl.range(0, V, BN, num_stages=NUM_STAGES):
            z, mx, sm = _logits_lse_step(x, w_ptr, b_ptr, n0 + rn0, n0 + rn0 < V, rd, d_ok, D, mx, sm)
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
        lse = mx + tl.log(sm)
        vals = tl.where(slot[None, :] < K, vals, float("-inf"))
        keys = tl.sort(_order_key(vals, ids), 1, descending=True)
        ids = (0x7FFFFFFF - (keys & 0xFFFFFFFF)).to(tl.int32)
        ordered = (keys >> 32).to(tl.int32)
        vals = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        out = rm[:, None] * K + slot[None, :]
        ok = m_ok[:, None] & (slot[None, :] < K)
        tl.store(val_ptr + out, vals - lse[:, None], mask=ok)
        tl.store(idx_ptr + out, ids.to(tl.int64), mask=ok)


def applies(x: torch.Tensor, k: int) -> bool:
    """CUDA frames in fp16 / bf16, d at most 512, k at most 64, at least MIN_ROWS frames."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.shape[-1] <= 512 and 1 <= k <= 64 and x.numel() // x.shape[-1] >= MIN_ROWS)


def proj_log_softmax_topk(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, k: int,
                          tiles: Optional[Plan] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) 16-bit, w (V, d) in x's dtype, b (V,) fp32 -> (values (..., k) fp32, ids
    (..., k) int64): the k largest of log_softmax(x @ w.T + b), values descending."""
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
    if R:
        p = tiles or FORCED or DEFAULT
        _ctc_topk_kernel[(triton.cdiv(R, p.bm),)](
            x2, w.contiguous(), b.contiguous(), vals, ids, R, V, d, x2.stride(0),
            K=k, KP=max(2, pow2(k)), BM=p.bm, BN=p.bn, BD=pow2(d), NUM_STAGES=p.stages, num_warps=p.warps)
    lead = x.shape[:-1]
    return vals.view(*lead, k), ids.view(*lead, k)
