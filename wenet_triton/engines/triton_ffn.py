"""The whole position-wise feed-forward module in one kernel (Triton-lang):
act(x @ W1.T + b1) @ W2.T (+ b2), without the (rows, hidden) tensor ever reaching memory.

Used by the `torch_cuda` engine below MAX_ROWS rows only (one utterance or a few): there it beat
cuBLAS + SiLU + the split-K down-projection on an H200 by 0.5-1.5 us per FFN; from 1,024 rows it
was slower than cuBLAS and than triton_gemm's SiLU GEMM (it reached ~270 TFLOP/s where cuBLAS
does more; benchmarks/results/h200_2026-12-03b). The idea: unfused, an FFN is cuBLAS (bias
epilogue) -> SiLU pass -> cuBLAS. At 64 x 20 s (32,768 rows, AISHELL 256 -> 2048 -> 256) the
hidden tensor is 134 MB, written by the first GEMM, read and written by the SiLU pass and read
by the second GEMM; at 1 x 10 s (256 rows) the three launches and two small GEMMs that each fill
a fraction of the GPU cost more than the arithmetic. Here each program takes BM rows and a slice
of the hidden units: for each BH-wide block of its slice it computes the hidden block on the
tensor cores (fp32), adds b1, applies the activation, rounds to the model's dtype and multiplies
it straight into its (BM, d) fp32 output accumulator: the pattern of flash attention, with an
activation in place of the softmax (nothing to rescale).

Split over the hidden units (S > 1, for few rows: one slice per program so the grid covers
the SMs): each program writes its fp32 partial product to parts[s]; the add + LayerNorm
kernel that follows every FFN in the engine sums them (kernels.add_layernorm_parts), as it
already does for the split-K down-projection. S = 1: the kernel adds b2 and stores rows in
the model's dtype.

Values: the hidden activations are rounded once to the model dtype as in the unfused path
(where the GEMM output is rounded, then the activation's); the output sums the same products
in fp32 in another order. Equal within the dtype's rounding, not bit for bit (tests/test_gpu.py
checks the encoder as close to the fp32 model as without the fusion).

No autotuning (nothing is timed at a server's start): the tile choice is a fixed rule of the
row count (`plan`), measured on an H200 with benchmarks/ffn_fused_ab.py; WENET_TRITON_FFN_PLAN
("BM,BH,warps,stages,S") forces one for A/B runs. Also runs in Triton's CPU interpreter
(TRITON_INTERPRET=1, tests/test_triton_gemm.py).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch

from wenet_triton.engines.triton_plan import forced_plan, num_sms, pow2, row_tile, slices

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps the unfused FFN
    triton = tl = None

ACTS = {"silu": 0, "relu": 1}
# the engine uses the kernel below this many rows only, split over the hidden units (its
# caller reduces the partials): on an H200 (benchmarks/results/h200_2026-12-03b, FFN + add +
# LayerNorm in CUDA graphs) 12.3 vs 12.8 us (cuBLAS + SiLU + split-K) at 256 rows, ReLU 11.1
# vs 12.6 at 410; from 1,024 rows slower (17.7 vs 17.5 / 16.0 with triton_gemm's SiLU GEMM;
# 259 vs 234 / 202 at 32,768: this kernel reaches ~270 TFLOP/s, cuBLAS more)
MAX_ROWS = int(os.environ.get("WENET_TRITON_FFN_MAX_ROWS", "1024"))


class Plan(NamedTuple):
    bm: int  # rows per program
    bh: int  # hidden units per inner step
    warps: int
    stages: int
    split: int  # slices of the hidden units (S): S > 1 returns fp32 partials


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _ffn_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y_ptr, M, D, H, H_PER,
                    sxm, sym, sys_,
                    BM: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, ACT: tl.constexpr,
                    PARTS: tl.constexpr, NUM_STAGES: tl.constexpr):
        pm = tl.program_id(0)
        ps = tl.program_id(1)
        x, rm, rd, m_ok, d_ok = row_tile(x_ptr, pm, M, D, sxm, BM, BD)
        rh0 = tl.arange(0, BH)
        acc = tl.zeros((BM, BD), dtype=tl.float32)
        h_lo = ps * H_PER
        h_hi = min(h_lo + H_PER, H)
        for h0 in tl.range(h_lo, h_hi, BH, num_stages=NUM_STAGES):
            rh = h0 + rh0
            h_ok = rh < h_hi
            # W1 (H, D) rows rh -> (BH, BD); W2 (D, H) columns rh -> (BD, BH)
            w1 = tl.load(w1_ptr + rh[:, None] * D + rd[None, :], mask=h_ok[:, None] & d_ok[None, :], other=0.0)
            a = tl.dot(x, w1.T)
            a += tl.load(b1_ptr + rh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
            if ACT == 0:
                a = a / (1.0 + tl.exp(-a))
            else:
                a = tl.maximum(a, 0.0)
            w2 = tl.load(w2_ptr + rd[:, None] * H + rh[None, :], mask=d_ok[:, None] & h_ok[None, :], other=0.0)
            acc = tl.dot(a.to(x.dtype), w2.T, acc)
        out = rm[:, None] * sym + rd[None, :]
        ok = m_ok[:, None] & d_ok[None, :]
        if PARTS:
            tl.store(y_ptr + ps * sys_ + out, acc, mask=ok)
        else:
            acc += tl.load(b2_ptr + rd, mask=d_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=ok)


# one plan for every call instead of the rule (A/B runs; benchmarks/ffn_fused_ab.py sets it)
FORCED: Optional[Plan] = forced_plan(Plan, "WENET_TRITON_FFN_PLAN")


def plan(rows: int, d: int, hidden: int, can_split: bool, sms: int = 132) -> Plan:
    """The tile rule (no tuning at run time). Many rows: 128-row programs over the whole
    hidden dimension. Few rows: 64-row programs and the hidden units split S ways so that
    there are about as many programs as SMs (when the caller can take partials)."""
    if FORCED is not None:
        return FORCED._replace(split=FORCED.split if can_split else 1)
    wide = pow2(d) > 256  # d 512: more warps for the (BM, d) accumulator, half-size weight tiles
    if rows >= 8192:
        bm, warps = 128, 8
    else:
        bm, warps = 64, 8 if wide else 4
    bh = 32 if wide else 64
    split = 1
    if can_split:
        blocks = -(-rows // bm)
        while blocks * split * 2 <= sms and hidden // (split * 2) >= 128:
            split *= 2
    return Plan(bm, bh, warps, 2, split)


def applies(x: torch.Tensor, w1: torch.Tensor, act: str) -> bool:
    """Whether ffn() takes these rows (else the caller runs the unfused FFN): a CUDA tensor in
    fp16 / bf16 (Triton's dot would round fp32 to TF32), d_model at most 512, a known
    activation, contiguous weights. The engine also asks for fewer than MAX_ROWS rows."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and act in ACTS and x.shape[-1] <= 512 and w1.is_contiguous() and x.stride(-1) == 1)


def ffn(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
        act: str = "silu", can_split: bool = False, tiles: Optional[Plan] = None) -> torch.Tensor:
    """act(x @ w1.T + b1) @ w2.T + b2 for x (..., d), w1 (H, d), w2 (d, H).

    Returns x's shape and dtype, or, when the plan splits the hidden units (only with
    can_split), fp32 partials (S, ..., d) WITHOUT b2: the caller adds the sum, b2 and rounds
    (kernels.add_layernorm_parts). tiles: a fixed plan (tests, benchmarks)."""
    if triton is None:
        raise RuntimeError("the fused FFN needs the triton package")
    if act not in ACTS:
        raise ValueError(f"fused FFN: activation {act!r} is not one of {sorted(ACTS)}")
    d = x.shape[-1]
    H = w1.shape[0]
    if w1.shape != (H, d) or w2.shape != (d, H):
        raise ValueError(f"fused FFN: w1 {tuple(w1.shape)} / w2 {tuple(w2.shape)} do not fit d {d}")
    x2 = x.reshape(-1, d)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    w1, w2 = w1.contiguous(), w2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    p = tiles or plan(M, d, H, can_split, num_sms(x.device))
    h_per, S = slices(H, p.split, p.bh)
    if S > 1:
        y = torch.empty((S, M, d), dtype=torch.float32, device=x.device)
    else:
        y = torch.empty((M, d), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, p.bm), S)
    _ffn_kernel[grid](x2, w1, b1, w2, b2, y, M, d, H, h_per,
                      x2.stride(0), d, M * d,
                      BM=p.bm, BD=pow2(d), BH=p.bh, ACT=ACTS[act], PARTS=S > 1, NUM_STAGES=p.stages,
                      num_warps=p.warps)
    if S > 1:
        return y.view(S, *x.shape[:-1], d)
    return y.view(*x.shape[:-1], d)
