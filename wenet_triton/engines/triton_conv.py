"""The conv subsampling's later convolutions (3x3, stride 2, no padding, channels-last, + bias
+ ReLU) as one implicit-GEMM kernel (Triton-lang).

Why: at 64 x 20 s on an H200 cuDNN's fused convolution + bias + ReLU for the second conv
(256 -> 256 channels, (64, 1025, 39) -> (64, 512, 19)) took 0.93 ms for 73 GFLOP, ~80 TFLOP/s
(benchmarks/results/h200_2026-12-02d/encoder_ab/profile_64x20.txt): the encoder's largest
single kernel. Here the convolution is a GEMM over rows = output positions (b, h, w) and
K = (kh, kw, c): each program loads, per step, BK channels of one kernel tap for BM output
positions straight from the channels-last input (contiguous channels: one coalesced row per
position), multiplies them with the matching weight tile on the tensor cores (fp32
accumulator), adds the bias, applies ReLU and stores channels-last rows; no unfolded copy.

Values as cuDNN's: fp16 / bf16 products summed in fp32, bias added in fp32, one rounding.

Opt-in (`WENET_TRITON_FUSED_CONV=1`, `CudaEngine(fused_conv=True)`): written and checked in
Triton's CPU interpreter (tests/test_triton_gemm.py) and against cuDNN in tests/test_gpu.py,
but NOT yet run on a GPU (session 19 had no device time left): its speed is unmeasured
(`python3 -m benchmarks.conv_subsample_ab`). Fixed tiles, no tuning at run time;
WENET_TRITON_CONV_PLAN ("BM,BN,BK,warps,stages") forces others for A/B runs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from wenet_triton.engines.triton_plan import forced_plan

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
