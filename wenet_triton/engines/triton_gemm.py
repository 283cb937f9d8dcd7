"""The conformer FFN's first GEMM with its bias and SiLU in one kernel (Triton-lang).

cuBLASLt has no SiLU epilogue, so the `torch_cuda` encoder runs `F.linear` (bias in the
epilogue) and then a separate SiLU pass over the (rows, 2048) hidden tensor: 1.73 of 13.7 ms
at 64 x 20 s on an H200 (benchmarks/results/h200_2026-12-02c), at memory bandwidth. This
kernel keeps the fp32 accumulator, adds the bias, applies SiLU and stores once.

On by default in the `torch_cuda` engine since 2026-12-03 (`WENET_TRITON_FUSED_SILU=0` or
`CudaEngine(fused_silu=False)` turns it off; `wenet-triton bench --engines torch_cuda_silu` runs
it alone, `torch_cuda_cublas` without it). Two kernels: a pointer-load one, and on Hopper and
later a persistent one (a program per SM walking the tiles) that loads its operands and stores
its output by TMA. The first form (the pointer kernel only) was exact but no faster on an H200
(2026-12-02, session 16: benchmarks/results/h200_2026-12-02f/silu_ab). Measured again on
2026-12-03 (session 18, benchmarks/results/h200_2026-12-03/silu_tma, each timed in a CUDA
graph): at 32,768 rows (64 x 20 s) TMA 108 us, pointer 136, cuBLAS + SiLU 137; at 4,096 17.6 /
20.2 / 21.6; at 1,024 7.3 / 6.7 / 8.7; at 256 6.9 / 3.8 / 5.5 us. Hence the TMA kernel from
TMA_MIN_ROWS (2,048) rows, the pointer kernel below. The encoder with it, two alternating rounds
on one machine: 64 x 20 s 12.88 / 12.92 -> 12.09 / 12.06 ms (audio-s/s 68.9k -> 71.9k), 64 x 10
s 6.60 / 6.55 -> 6.15 / 6.22 ms; batch 1 within the machine's drift, also with every batch fused
(MIN_ROWS 0). A serving run (2026-12-03, benchmarks/results/h200_2026-12-03b) showed its
first-use tuning (Triton compiles and times its tile configurations when a new size class of
rows first comes) costs a server's start ~4 s (65 vs 61 s, with triton_ffn and triton_vocab),
within its drift. Also tested on the CPU with Triton's interpreter (TRITON_INTERPRET=1). Used
only for fp16 / bf16 rows (Triton's dot would round fp32 operands to TF32) and batches of at
least MIN_ROWS rows (1,024; fewer rows fused did not change the batch-1 encoder). Values: SiLU
of the fp32 sum rounded once, where the two-op path rounds the GEMM output first: equal within
the dtype's rounding, not bit for bit.

Both kernels also take e4m3 operands (engines/fp8.py, opt-in): the accumulator is scaled by the
operands' scales, SiLU'd, divided by the output's scale and stored as e4m3 (the FP8 FFN's hidden
units, one byte each); the FP8 sums are promoted to fp32 per BK slice (see _dot).

Needs the `triton` package (part of PyTorch's CUDA wheels on Linux); `available()` says
whether it is there.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch

from wenet_triton.engines.triton_plan import num_sms

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps cuBLAS + SiLU
    triton = tl = None
try:  # Triton >= 3.3: TMA descriptors made on the host, passed to the kernel by value
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

# below this many rows the engine keeps cuBLAS + SiLU; WENET_TRITON_SILU_MIN_ROWS overrides it
# (an A/B knob for benchmarks: 0 sends every FFN through the fused kernel)
MIN_ROWS = int(os.environ.get("WENET_TRITON_SILU_MIN_ROWS", "1024"))
# from this many rows the persistent TMA kernel (Hopper and later), below it the pointer one:
# on an H200 (benchmarks/results/h200_2026-12-03, in CUDA graphs, K 256 -> N 2048) 256 rows
# 3.8 vs 6.9 us, 1,024 6.7 vs 7.3, 4,096 20.2 vs 17.6, 32,768 136 vs 108 (cuBLAS + SiLU: 5.5,
# 8.7, 21.6, 137)
TMA_MIN_ROWS = int(os.environ.get("WENET_TRITON_SILU_TMA_MIN_ROWS", "2048"))


def available() -> bool:
    return triton is not None


if triton is not None:
    _CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in [(128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (64, 256, 32, 4, 4),
                                         (128, 64, 64, 4, 4), (64, 128, 64, 4, 3),
                                         # a few hundred rows (one utterance): more, smaller
                                         # tiles so the grid covers the SMs
                                         (64, 64, 64, 4, 3), (32, 128, 64, 4, 3), (32, 64, 64, 4, 3)]]

    @triton.jit
    def _tile_of(t, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
        """Output tile t -> its (row block, column block): tiles in groups of GROUP_M row
        blocks, so that neighbouring tiles share weight tiles."""
        n_m = tl.cdiv(M, BM)
        per_group = GROUP_M * tl.cdiv(N, BN)
        first_m = (t // per_group) * GROUP_M
        group_rows = min(n_m - first_m, GROUP_M)
        return first_m + ((t % per_group) % group_rows), (t % per_group) // group_rows

    @triton.jit
    def _dot(a, b, acc, BK: tl.constexpr, Q8: tl.constexpr):
        """acc + a @ b. e4m3 operands: Hopper's FP8 tensor-core instructions add in reduced
        precision, and Triton by default keeps the whole K loop in that accumulator (sums
        drifted past one e4m3 step on an H200, 2026-12-03); each BK-wide product is added to
        the fp32 accumulator instead."""
        if Q8:
            return tl.dot(a, b, acc, max_num_imprecise_acc=BK)
        return tl.dot(a, b, acc)

    @triton.jit
    def _bias_silu(acc, b_ptr, rn, N, scale, out_inv, Q8: tl.constexpr):
        """SiLU(acc + bias[rn]) on the fp32 accumulator; Q8 (fp8 operands, fp8 output): the
        accumulator times the operands' scales first, the result divided by the output's
        scale (times out_inv) and clamped to e4m3's range."""
        if Q8:
            acc = acc * scale
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        y = acc / (1.0 + tl.exp(-acc))
        if Q8:
            y = tl.clamp(y * out_inv, -448.0, 448.0)
        return y

    @triton.autotune(configs=_CONFIGS, key=["N", "K", "M_CLASS"])
    @triton.jit
    def _linear_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, M_CLASS,
                            sxm, sxk, swn, swk, sym, syn, scale, out_inv, Q8: tl.constexpr,
                            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        pm, pn = _tile_of(tl.program_id(0), M, N, BM, BN, GROUP_M)
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
            acc = _dot(xt, wt, acc, BK, Q8)
        y = _bias_silu(acc, b_ptr, rn, N, scale, out_inv, Q8)
        y = y.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, y, mask=(rm[:, None] < M) & (rn[None, :] < N))


    # Hopper and later: a persistent kernel (one program per SM walking the tiles, so the
    # next tile's loads overlap this tile's epilogue) whose operands come in and whose output
    # goes out by TMA (the bulk tensor copy engine) instead of per-thread loads and stores
    def _tma_blocks(nargs):
        nargs["x_desc"].block_shape = [nargs["BM"], nargs["BK"]]
        nargs["w_desc"].block_shape = [nargs["BN"], nargs["BK"]]
        nargs["y_desc"].block_shape = [nargs["BM"], nargs["BN"]]

    _TMA_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s,
                                  pre_hook=_tma_blocks)
                    for bm, bn, bk, w, s in [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4),
                                             (128, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                             (64, 64, 64, 4, 3)]]

    @triton.autotune(configs=_TMA_CONFIGS, key=["N", "K", "M_CLASS"])
    @triton.jit
    def _linear_silu_tma_kernel(x_desc, w_desc, y_desc, b_ptr, M, N, K, M_CLASS, scale, out_inv,
                                Q8: tl.constexpr, NUM_SMS: tl.constexpr,
                                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        k_tiles = tl.cdiv(K, BK)
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BM) * tl.cdiv(N, BN), NUM_SMS, flatten=True):
            pm, pn = _tile_of(tile, M, N, BM, BN, GROUP_M)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for kk in range(k_tiles):  # out-of-range rows / columns of a tile load as zeros
                xt = x_desc.load([pm * BM, kk * BK])
                wt = w_desc.load([pn * BN, kk * BK])
                acc = _dot(xt, wt.T, acc, BK, Q8)
            y = _bias_silu(acc, b_ptr, pn * BN + tl.arange(0, BN), N, scale, out_inv, Q8)
            y_desc.store([pm * BM, pn * BN], y.to(y_desc.dtype, fp_downcast_rounding="rtne"))  # clipped to (M, N)


def _tma_fits(x2: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the TMA kernel can take these operands: Triton with host descriptors, a Hopper
    or newer GPU (or Triton's CPU interpreter), contiguous rows 16-byte aligned."""
    if TensorDescriptor is None or not hasattr(tl, "make_tensor_descriptor"):
        return False
    if x2.is_cuda and torch.cuda.get_device_capability(x2.device)[0] < 9:
        return False
    item = x2.element_size()
    return (x2.stride(1) == 1 and w.stride(1) == 1 and w.stride(0) == w.shape[1]
            and (x2.stride(0) * item) % 16 == 0 and (w.shape[1] * item) % 16 == 0
            and (w.shape[0] * item) % 16 == 0 and x2.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0)


def applies(x: torch.Tensor) -> bool:
    """Whether linear_silu takes these rows (else the caller runs F.linear + F.silu)."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.numel() // x.shape[-1] >= MIN_ROWS)


def fp8_applies(x: torch.Tensor) -> bool:
    """Whether linear_silu takes e4m3 operands on this device (Hopper or newer; fp8 tensor
    cores): engines/fp8.py asks before it runs the FP8 FFN."""
    return (triton is not None and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9
            and x.shape[-1] % 16 == 0)


def linear_silu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                tiles: Optional[Dict[str, int]] = None, tma: Optional[bool] = None,
                scale: Optional[float] = None, out_scale: Optional[float] = None) -> torch.Tensor:
    """silu(x @ w.T + b) for x (..., K), w (N, K), b (N,), in x's dtype. tiles: fixed
    BM / BN / BK / GROUP_M instead of the tuned choice (tests; Triton's CPU interpreter).
    tma: the persistent TMA kernel or the pointer one (default: TMA from TMA_MIN_ROWS rows
    where it fits, _tma_fits).

    FP8 (x and w in torch.float8_e4m3fn; engines/fp8.py): scale = x's scale times w's, and
    the result is quantized to e4m3 at out_scale: silu(scale * (x @ w.T) + b) / out_scale,
    clamped to +-448, returned in e4m3."""
    if triton is None:
        raise RuntimeError("linear_silu needs the triton package")
    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = w.shape[0]
    q8 = x.dtype == torch.float8_e4m3fn
    if q8 and (w.dtype != x.dtype or scale is None or out_scale is None):
        raise ValueError("linear_silu: fp8 rows need an fp8 weight, scale and out_scale")
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    q = (float(scale), 1.0 / float(out_scale), q8) if q8 else (1.0, 1.0, False)
    if tma is None:
        tma = M >= TMA_MIN_ROWS and _tma_fits(x2, w)
    if tma:
        return _linear_silu_tma(x2, w, b, y, tiles, q).view(*x.shape[:-1], N)

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)

    args = (x2, w, b, y, M, N, K, max(M, 1).bit_length(), x2.stride(0), x2.stride(1),
            w.stride(0), w.stride(1), y.stride(0), y.stride(1), *q)
    if tiles is not None:
        _linear_silu_kernel.fn[grid](*args, **tiles)
    else:
        # the tile choice is tuned per (N, K), size class of M (a power of two) and dtype: a
        # few classes, not one tuning per batch bucket
        _linear_silu_kernel[grid](*args)
    return y.view(*x.shape[:-1], N)


def warm_rows(max_rows: int) -> List[int]:
    """One row count per size class the autotuner keys on (M_CLASS: the bit length of the row
    count), from MIN_ROWS up to max_rows: what warm() runs."""
    out = []
    c = max(MIN_ROWS, 1).bit_length()
    while True:
        rows = max(MIN_ROWS, 1 << (c - 1))
        if rows > max_rows:
            return out
        out.append(rows)
        c += 1


def warm(n: int, k: int, max_rows: int, device, dtype, fp8: bool = False) -> int:
    """Run the kernel once per size class of rows up to max_rows (warm_rows) for a (n, k)
    weight, so that its autotuner compiles and times its tile choices now (a server's load)
    rather than on the first live batch of each class (seconds, with every request of that
    batch waiting); fp8: its e4m3 form (engines/fp8.py). Returns the number of classes run."""
    rows = warm_rows(max_rows)
    if triton is None or not rows:
        return 0
    g = torch.Generator(device=device).manual_seed(0)
    op = torch.float8_e4m3fn if fp8 else dtype
    x = torch.randn(rows[-1], k, device=device, generator=g).to(op)
    w = (torch.randn(n, k, device=device, generator=g) * 0.05).to(op)
    b = torch.zeros(n, device=device, dtype=dtype)
    q = {"scale": 1.0, "out_scale": 1.0} if fp8 else {}
    for r in rows:
        linear_silu(x[:r], w, b, **q)
    return len(rows)


def _linear_silu_tma(x2, w, b, y, tiles: Optional[Dict[str, int]], q) -> torch.Tensor:
    M, K = x2.shape
    N = w.shape[0]
    t = tiles or {"BM": 64, "BN": 64, "BK": 64}  # tuned: the autotuner's pre-hook sets the blocks
    descs = (TensorDescriptor.from_tensor(x2, [t["BM"], t["BK"]]),
             TensorDescriptor.from_tensor(w, [t["BN"], t["BK"]]),
             TensorDescriptor.from_tensor(y, [t["BM"], t["BN"]]))
    sms = num_sms(x2.device)

    def grid(meta):
        return (min(sms, triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"])),)

    args = (*descs, b, M, N, K, max(M, 1).bit_length(), *q, sms)
    if tiles is not None:
        _linear_silu_tma_kernel.fn[grid](*args, **tiles)
    else:
        _linear_silu_tma_kernel[grid](*args)
    return y
