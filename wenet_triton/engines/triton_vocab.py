"""The attention decoder's output projection + log-softmax + gather of the target token in one
kernel (Triton-lang): per hypothesis position, log_softmax(x @ W.T + b)[target], without the
(rows, vocabulary) logits ever reaching memory.

Why: rescoring needs only the log-probability of each hypothesis' next token, yet the
unfused path writes the full fp32 logits (64 x 20 s, beam 10: 51,840 rows x 4,240 = 879 MB
per decoder direction) and reads them back (kernels.log_softmax_gather). Here a program
takes BM rows and walks the vocabulary in BN-wide tiles: the tile's logits on the tensor
cores (fp32 accumulator), an online log-sum-exp (running max and rescaled sum, as flash
attention's softmax) and the target's logit picked out where its column passes.

Few rows (one utterance: ~400) split the vocabulary over programs (VS slices, so that the
grid covers the SMs); each writes its slice's (max, sum, target logit) and a second small
kernel combines the slices.

Values: the products of the 16-bit rows and weights are exact in fp32 and summed in fp32, as
in the unfused TF32 GEMM over the same 16-bit values (the engine's linear_f32), in another
order; the bias is the model's fp32 bias; log-sum-exp in fp32. Equal to the unfused scores
within fp32 rounding (tests/test_gpu.py). Needs the `triton` package; without it (or for
fp32 rows) the engine keeps linear_f32 + log_softmax_gather.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from wenet_triton.engines.triton_plan import forced_plan, num_sms, pow2, row_tile, slices

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


class Plan(NamedTuple):
    bm: int  # rows per program
    bn: int  # vocabulary columns per inner step
    warps: int
    stages: int
    split: int  # vocabulary slices (VS)


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _logits_lse_step(x, w_ptr, b_ptr, rn, n_ok, rd, d_ok, D, mx, sm):
        """One vocabulary tile: its logits z = x @ w[rn].T + b[rn] (fp32; -inf past the
        valid columns n_ok) and the online log-sum-exp state (running max mx, sum sm rescaled
        to it) with the tile folded in. Shared with triton_ctc."""
        w = tl.load(w_ptr + rn[:, None] * D + rd[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        z = tl.dot(x, w.T)
        z += tl.load(b_ptr + rn, mask=n_ok, other=0.0)[None, :]
        z = tl.where(n_ok[None, :], z, float("-inf"))
        new_mx = tl.maximum(mx, tl.max(z, 1))
        sm = sm * tl.exp(mx - new_mx) + tl.sum(tl.exp(z - new_mx[:, None]), 1)
        return z, new_mx, sm

    @triton.jit
    def _proj_lse_kernel(x_ptr, w_ptr, b_ptr, tgt_ptr, lens_ptr, out_ptr, part_ptr,
                         R, L, V, D, V_PER, sxm,
                         BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SPLIT: tl.constexpr,
                         NUM_STAGES: tl.constexpr):
        pm = tl.program_id(0)
        ps = tl.program_id(1)
        x, rm, rd, m_ok, d_ok = row_tile(x_ptr, pm, R, D, sxm, BM, BD)
        rn0 = tl.arange(0, BN)
        tgt = tl.load(tgt_ptr + rm, mask=m_ok, other=0).to(tl.int32)
        tgt = tl.minimum(tl.maximum(tgt, 0), V - 1)  # as the unfused gather clamps
        mx = tl.full((BM,), float("-inf"), tl.float32)
        sm = tl.zeros((BM,), tl.float32)
        tv = tl.zeros((BM,), tl.float32)
        v_lo = ps * V_PER
        v_hi = min(v_lo + V_PER, V)
        for n0 in tl.range(v_lo, v_hi, BN, num_stages=NUM_STAGES):
            rn = n0 + rn0
            z, mx, sm = _logits_lse_step(x, w_ptr, b_ptr, rn, rn < v_hi, rd, d_ok, D, mx, sm)
            tv += tl.sum(tl.where(rn[None, :] == tgt[:, None], z, 0.0), 1)
        if SPLIT:  # (3, VS, R): max, sum, target logit of this slice
            base = part_ptr + ps * R + rm
            tl.store(base, mx, mask=m_ok)
            tl.store(base + tl.num_programs(1) * R, sm, mask=m_ok)
            tl.store(base + 2 * tl.num_programs(1) * R, tv, mask=m_ok)
        else:
            valid = (rm % L) < tl.load(lens_ptr + rm // L, mask=m_ok, other=0)
            tl.store(out_ptr + rm, tl.where(valid, tv - (mx + tl.log(sm)), 0.0), mask=m_ok)

    @triton.jit
    def _combine_kernel(part_ptr, lens_ptr, out_ptr, R, L, VS, VSP: tl.constexpr, BR: tl.constexpr):
        rm = tl.program_id(0) * BR + tl.arange(0, BR)
        rs = tl.arange(0, VSP)
        ok = rm < R
        both = (rs[:, None] < VS) & ok[None, :]
        idx = rs[:, None] * R + rm[None, :]
        mx = tl.load(part_ptr + idx, mask=both, other=float("-inf"))
        sm = tl.load(part_ptr + VS * R + idx, mask=both, other=0.0)
        tv = tl.load(part_ptr + 2 * VS * R + idx, mask=both, other=0.0)
        top = tl.max(mx, 0)
        lse = top + tl.log(tl.sum(sm * tl.exp(mx - top[None, :]), 0))
        valid = (rm % L) < tl.load(lens_ptr + rm // L, mask=ok, other=0)
        tl.store(out_ptr + rm, tl.where(valid, tl.sum(tv, 0) - lse, 0.0), mask=ok)


# one plan for every call instead of the rule (A/B runs)
FORCED: Optional[Plan] = forced_plan(Plan, "WENET_TRITON_VOCAB_PLAN")


def plan(rows: int, vocab: int, sms: int = 132) -> Plan:
    """The tile rule (nothing is timed at run time): 128-row programs over the whole
    vocabulary for many rows; for few, 64-row programs and the vocabulary split in slices of
    whole tiles up to about two programs per SM (on an H200, benchmarks/results/
    h200_2026-12-03b: 410 rows 10.6 us with 32 slices, 12.8 with 16; unfused 23.6)."""
    if FORCED is not None:
        return FORCED
    bm, bn = (128, 128) if rows >= 16384 else (64, 128)
    warps = 8 if bm == 128 else 4
    blocks = -(-rows // bm)
    tiles = -(-vocab // bn)
    split = 1
    while blocks * split * 2 <= 2 * sms and split * 2 <= tiles:
        split *= 2
    return Plan(bm, bn, warps, 2, split)


def applies(x: torch.Tensor) -> bool:
    """CUDA rows in fp16 / bf16 (Triton's dot would round fp32 rows to TF32), d at most 512."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.shape[-1] <= 512)


def proj_log_softmax_gather(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                            lens: torch.Tensor, tiles: Optional[Plan] = None) -> torch.Tensor:
    """x (N, L, d) 16-bit, w (V, d) in x's dtype, b (V,) fp32, target (N, L) int, lens (N,)
    -> (N, L) fp32: log_softmax(x @ w.T + b)[target], 0 at positions >= lens."""
    if triton is None:
        raise RuntimeError("the fused vocabulary projection needs the triton package")
    N, L, d = x.shape
    V = w.shape[0]
    if w.shape[1] != d or b.shape != (V,):
        raise ValueError(f"vocabulary projection: w {tuple(w.shape)} / b {tuple(b.shape)} do not fit d {d}")
    x2 = x.reshape(-1, d)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    R = N * L
    out = torch.empty((N, L), dtype=torch.float32, device=x.device)
    if R == 0:
        return out
    p = tiles or plan(R, V, num_sms(x.device))
    v_per, VS = slices(V, p.split, p.bn)
    tgt = target.reshape(-1).contiguous()
    lens = lens.to(torch.int32).contiguous()
    part = torch.empty((3, VS, R), dtype=torch.float32, device=x.device) if VS > 1 else out
    _proj_lse_kernel[(triton.cdiv(R, p.bm), VS)](
        x2, w.contiguous(), b.contiguous(), tgt, lens, out, part, R, L, V, d, v_per, x2.stride(0),
        BM=p.bm, BN=p.bn, BD=pow2(d), SPLIT=VS > 1, NUM_STAGES=p.stages, num_warps=p.warps)
    if VS > 1:
        BR = 128
        _combine_kernel[(triton.cdiv(R, BR),)](part, lens, out, R, L, VS, VSP=pow2(VS), BR=BR)
    return out
