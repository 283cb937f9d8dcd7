"""The conformer FFN's first GEMM with its bias and SiLU in one kernel (Triton-lang).

cuBLASLt has no SiLU epilogue, so the `torch_cuda` encoder runs `F.linear` (bias in the
epilogue) and then a separate SiLU pass over the (rows, 2048) hidden tensor: 1.73 of 13.7 ms
at 64 x 20 s on an H200 (benchmarks/results/h200_2026-12-02c), at memory bandwidth. This
kernel keeps the fp32 accumulator, adds the bias, applies SiLU and stores once.

Opt-in (`CudaEngine(fused_silu=True)`, `wenet-triton bench --engines torch_cuda_silu`), and
it stays so: on an H200 (2026-12-02, benchmarks/results/h200_2026-12-02f/silu_ab) it is exact
to the two ops (tests/test_gpu.py) but no faster: at 64 x 20 s this kernel took 141 us per
call where cuBLAS's GEMM took 46 us and the SiLU 74 us, so the encoder stayed at 13.4 ms; at
1 x 10 s with every batch sent through it (WENET_TRITON_SILU_MIN_ROWS=0) 7.8 us against
4.2 + 2.1 us, the encoder 1.08-1.10 vs 1.12-1.28 ms (within the machine's drift). A GEMM
that beats cuBLAS on Hopper needs TMA loads and a warp-specialized, persistent schedule; this
one has neither. Also tested on the CPU with Triton's interpreter (TRITON_INTERPRET=1).
Used only for fp16 / bf16 rows (Triton's dot would round fp32 operands to TF32) and batches
of at least MIN_ROWS rows (below that cuBLAS + SiLU is a few µs anyway). Values: SiLU of
the fp32 sum rounded once, where the two-op path rounds the GEMM output first: equal within
the dtype's rounding, not bit for bit.

Needs the `triton` package (part of PyTorch's CUDA wheels on Linux); `available()` says
whether it is there.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps cuBLAS + SiLU
    triton = tl = None

# below this many rows the engine keeps cuBLAS + SiLU; WENET_TRITON_SILU_MIN_ROWS overrides it
# (an A/B knob for benchmarks: 0 sends every FFN through the fused kernel)
MIN_ROWS = int(os.environ.get("WENET_TRITON_SILU_MIN_ROWS", "1024"))


def available() -> bool:
    return triton is not None


if triton is not None:
    _CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in [(128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (64, 256, 32, 4, 4),
                                         (128, 64, 64, 4, 4), (64, 128, 64, 4, 3),
                                         # a few hundred rows (one utterance): more, smaller
                                         # tiles so the grid covers the SMs
                                         (64, 64, 64, 4, 3), (32, 128, 64, 4, 3), (32, 64, 64, 4, 3)]]

    @triton.autotune(configs=_CONFIGS, key=["N", "K", "M_CLASS"])
    @triton.jit
    def _linear_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, M_CLASS,
                            sxm, sxk, swn, swk, sym, syn,
                            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        # tiles in groups of GROUP_M row blocks, so neighbouring programs share weight tiles
        pid = tl.program_id(0)
        n_m = tl.cdiv(M, BM)
        n_n = tl.cdiv(N, BN)
        per_group = GROUP_M * n_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = min(n_m - first_m, GROUP_M)
        pm = first_m + ((pid % per_group) % group_rows)
        pn = (pid % per_group) // group_rows
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + rk
            xt = tl.load(x_ptr + rm[:, None] * sxm + ks[None, :] * sxk,
                         mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
            wt = tl.load(w_ptr + rn[None, :] * swn + ks[:, None] * swk,
                         mask=(rn[None, :] < N) & (ks[:, None] < K), other=0.0)
            acc = tl.dot(xt, wt, acc)
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        y = acc / (1.0 + tl.exp(-acc))
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, y.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def applies(x: torch.Tensor) -> bool:
    """Whether linear_silu takes these rows (else the caller runs F.linear + F.silu)."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.numel() // x.shape[-1] >= MIN_ROWS)


def linear_silu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                tiles: Optional[Dict[str, int]] = None) -> torch.Tensor:
    """silu(x @ w.T + b) for x (..., K), w (N, K), b (N,), in x's dtype. tiles: fixed
    BM / BN / BK / GROUP_M instead of the tuned choice (tests; Triton's CPU interpreter)."""
    if triton is None:
        raise RuntimeError("linear_silu needs the triton package")
    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = w.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)

    args = (x2, w, b, y, M, N, K, max(M, 1).bit_length(), x2.stride(0), x2.stride(1),
            w.stride(0), w.stride(1), y.stride(0), y.stride(1))
    if tiles is not None:
        _linear_silu_kernel.fn[grid](*args, **tiles)
    else:
        # the tile choice is tuned per (N, K) and size class of M (a power of two): a few
        # classes, not one tuning per batch bucket
        _linear_silu_kernel[grid](*args)
    return y.view(*x.shape[:-1], N)
