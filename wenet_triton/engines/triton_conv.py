"""The conv subsampling in Triton-lang: its later convolutions (3x3, stride 2, no padding,
channels-last, + bias + ReLU) as one implicit-GEMM kernel, and its first (one input channel)
with the CMVN, the cast and the patch gathering in one kernel (first_conv_relu).

Why: at 64 x 20 s on an H200 cuDNN's fused convolution + bias + ReLU for the second conv
(256 -> 256 channels, (64, 1025, 39) -> (64, 512, 19)) took 0.93 ms for 73 GFLOP, ~80 TFLOP/s
(benchmarks/results/h200_2026-12-02d/encoder_ab/profile_64x20.txt): the encoder's largest
single kernel. Here the convolution is a GEMM over rows = output positions (b, h, w) and
K = (kh, kw, c): each program loads, per step, BK channels of one kernel tap for BM output
positions straight from the channels-last input (contiguous channels: one coalesced row per
position), multiplies them with the matching weight tile on the tensor cores (fp32
accumulator), adds the bias, applies ReLU and stores channels-last rows; no unfolded copy.
The first conv ran as CMVN (two ops), a cast, an unfold + pad copy and a GEMM + ReLU: ~0.9 ms
at 64 x 20 s for a 655 MB output; first_conv_relu reads the fp32 features once and writes that
output once.

Values as cuDNN's: fp16 / bf16 products summed in fp32, bias added in fp32, one rounding.

Measured on an H200 (2026-12-03, benchmarks/results/h200_2026-12-03c, each in a CUDA graph,
`python3 -m benchmarks.conv_subsample_ab --sweep`): first_conv_relu 7.0 / 73.8 / 566 us
against 18.2 / 96.2 / 857 for the unfused ops at 1 x 10 s / 8 x 20 s / 64 x 20 s, so the
`torch_cuda` engine uses it by default (`WENET_TRITON_FUSED_CONV1=0` turns it off); the
implicit-GEMM convolution lost to cuDNN at every shape and plan (best 1,680 vs 997 us at 64 x
20 s, 26 vs 17 at 1 x 10 s: ~435 TFLOP/s-equivalent at best, cuDNN ~737), so it stays opt-in
(`WENET_TRITON_FUSED_CONV=1`, `CudaEngine(fused_conv=True)`) for further work. Both pass
Triton's CPU interpreter (tests/test_triton_gemm.py) and the GPU tests against cuDNN
(tests/test_gpu.py). Fixed tiles, no tuning at run time; WENET_TRITON_CONV_PLAN
("BM,BN,BK,warps,stages") forces others for A/B runs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from wenet_triton.engines.triton_plan import forced_plan, pow2

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


class Plan(NamedTuple):
    bm: int
    bn: int
    bk: int
    warps: int
    stages: int


DEFAULT = Plan(128, 128, 64, 8, 3)


FORCED: Optional[Plan] = forced_plan(Plan, "WENET_TRITON_CONV_PLAN")


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _conv_relu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, C, HO, WO,
                          sxb, sxh, sxw, sxc,
                          KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                          NUM_STAGES: tl.constexpr):
        # output tiles in groups of GROUP_M row blocks (neighbouring programs share weights)
        pid = tl.program_id(0)
        n_m = tl.cdiv(M, BM)
        n_n = tl.cdiv(N, BN)
        per_group = GROUP_M * n_n
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = min(n_m - first_m, GROUP_M)
        pm = first_m + (pid % per_group) % rows_in_group
        pn = (pid % per_group) // rows_in_group
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        m_ok = rm < M
        n_ok = rn < N
        b = rm // (HO * WO)
        r = rm % (HO * WO)
        base = b.to(tl.int64) * sxb + (r // WO * STRIDE) * sxh + (r % WO * STRIDE) * sxw
        c_steps = tl.cdiv(C, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for it in tl.range(0, KH * KW * c_steps, num_stages=NUM_STAGES):
            tap = it // c_steps
            kh = tap // KW
            kw = tap % KW
            rc = (it % c_steps) * BK + rk
            c_ok = rc < C
            a = tl.load(x_ptr + base[:, None] + kh * sxh + kw * sxw + rc[None, :] * sxc,
                        mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            # weight (N, KH, KW, C) (channels-last): element (n, kh, kw, c)
            w = tl.load(w_ptr + ((rn[None, :] * KH + kh) * KW + kw) * C + rc[:, None],
                        mask=n_ok[None, :] & c_ok[:, None], other=0.0)
            acc = tl.dot(a, w, acc)
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc = tl.maximum(acc, 0.0)
        tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


    @triton.jit
    def _first_conv_kernel(x_ptr, mean_ptr, istd_ptr, w_ptr, b_ptr, y_ptr, M, T1, F1, N, KW, sxb, sxt,
                           KS: tl.constexpr, STRIDE: tl.constexpr, KP: tl.constexpr, CMVN: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr):
        """The subsampling's first conv (one input channel) on fp32 features: CMVN, the cast
        to the weights' dtype, the KS x KS patch of each output position as a K = KP row (taps
        t-major, zero past KS*KS), the GEMM with the (N, KW) tap-major weights, bias, ReLU;
        output rows (b, t1, f1) of N channels (channels-last)."""
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        kk = tl.arange(0, KP)
        m_ok = rm < M
        n_ok = rn < N
        k_ok = kk < KS * KS
        b = rm // (T1 * F1)
        r = rm % (T1 * F1)
        f = (r % F1)[:, None] * STRIDE + (kk % KS)[None, :]
        t = (r // F1)[:, None] * STRIDE + (kk // KS)[None, :]
        both = m_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + b.to(tl.int64)[:, None] * sxb + t * sxt + f, mask=both, other=0.0)
        if CMVN:  # (x - mean) * istd in fp32, as the engine's two ops
            a = (a - tl.load(mean_ptr + f, mask=both, other=0.0)) * tl.load(istd_ptr + f, mask=both, other=0.0)
        a = tl.where(both, a, 0.0).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn[None, :] * KW + kk[:, None], mask=n_ok[None, :] & (kk < KW)[:, None], other=0.0)
        acc = tl.dot(a, w)
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc = tl.maximum(acc, 0.0)
        tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


def first_conv_relu(speech: torch.Tensor, cmvn, w: torch.Tensor, b: torch.Tensor, k: int, stride: int,
                    bm: int = 128, bn: int = 128) -> torch.Tensor:
    """The subsampling's first convolution from fp32 features in one kernel: speech (B, T, F)
    fp32, cmvn (mean, istd) fp32 (F,) or None, w (N, KW) the k x k taps (t-major) padded to KW
    columns, b (N,) -> (B, T1, F1, N) in w's dtype: relu(unfold(cmvn(speech)) @ w.T + b), what
    FastModel._subsample computes with four ops (CMVN, cast, unfold + pad copy, GEMM)."""
    if triton is None:
        raise RuntimeError("the Triton convolution needs the triton package")
    x = speech.contiguous()
    B, T, F = x.shape
    N, KW = w.shape
    T1, F1 = (T - k) // stride + 1, (F - k) // stride + 1
    y = torch.empty((B, max(T1, 0), max(F1, 0), N), dtype=w.dtype, device=x.device)
    M = y.numel() // N if N else 0
    if M > 0:
        mean, istd = cmvn if cmvn is not None else (x, x)  # unused without CMVN
        grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
        _first_conv_kernel[grid](x, mean, istd, w.contiguous(), b, y, M, T1, F1, N, KW, x.stride(0), x.stride(1),
                                 KS=k, STRIDE=stride, KP=max(16, pow2(max(KW, k * k))), CMVN=cmvn is not None,
                                 BM=bm, BN=bn, num_warps=4)
    return y


def applies_first(speech: torch.Tensor, w: torch.Tensor) -> bool:
    """fp32 CUDA features and 16-bit weights (first_conv_relu's inputs)."""
    return (triton is not None and speech.is_cuda and speech.dtype == torch.float32 and speech.dim() == 3
            and w.dtype in (torch.float16, torch.bfloat16))


def applies(x: torch.Tensor, w: torch.Tensor, stride) -> bool:
    """x (B, C, H, W) in channels-last memory on CUDA in fp16 / bf16, w (N, C, KH, KW)
    channels-last, a square stride, no more than 512 channels in."""
    s = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and x.dim() == 4 and x.stride(1) == 1 and s[0] == s[1]
            and w.is_contiguous(memory_format=torch.channels_last) and w.shape[1] == x.shape[1])


def conv2d_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride,
                tiles: Optional[Plan] = None) -> torch.Tensor:
    """relu(conv2d(x, w, b, stride)) without padding for x (B, C, H, W) (channels-last memory)
    -> (B, N, HO, WO) in channels-last memory, as torch.cudnn_convolution_relu returns it."""
    if triton is None:
        raise RuntimeError("the Triton convolution needs the triton package")
    s = stride[0] if isinstance(stride, (tuple, list)) else int(stride)
    B, C, H, W = x.shape
    N, C2, KH, KW = w.shape
    if C2 != C:
        raise ValueError(f"conv: weight {tuple(w.shape)} does not take {C} input channels")
    HO, WO = (H - KH) // s + 1, (W - KW) // s + 1
    y = torch.empty((B, HO, WO, N), dtype=x.dtype, device=x.device)
    M = B * HO * WO
    if M > 0:
        wl = w.contiguous(memory_format=torch.channels_last)
        p = tiles or FORCED or DEFAULT
        grid = (triton.cdiv(M, p.bm) * triton.cdiv(N, p.bn),)
        _conv_relu_kernel[grid](x, wl, b, y, M, N, C, HO, WO,
                                x.stride(0), x.stride(2), x.stride(3), x.stride(1),
                                KH=KH, KW=KW, STRIDE=s, BM=p.bm, BN=p.bn, BK=p.bk, GROUP_M=8,
                                NUM_STAGES=p.stages, num_warps=p.warps)
    return y.permute(0, 3, 1, 2)
