#!/usr/bin/env python3
"""Time the attention kernel (the WenetRelPosAttention plugin's) against the unfused torch
math and PyTorch SDPA over [q+u, q+v]·[k, p] (what the torch_cuda engine runs), fp16, H200."""
import os

import torch

from wenet_triton.bench import gpu_ms as ms
from wenet_triton.engines import kernels


def main():
    if not os.path.exists(kernels.default_lib_path()):
        kernels.build()
    kernels.load()
    H, dk = 4, 64
    print(f"{'B':>3} {'T':>4} {'ours':>8} {'unfused':>8} {'SDPA':>8}  ms (fp16, H={H}, dk={dk})")
    for B, T in [(16, 125), (64, 125), (16, 500), (64, 500)]:
        r = lambda *s: torch.randn(*s, device="cuda", dtype=torch.half)  # noqa: E731
        qu, k, v, qv, p = r(B, H, T, dk), r(B, H, T, dk), r(B, H, T, dk), r(B, H, T, dk), r(1, H, T, dk)
        bias = torch.zeros(B, 1, 1, T, device="cuda", dtype=torch.half)
        q2, k2 = torch.cat([qu, qv], -1), torch.cat([k, p.expand(B, -1, -1, -1)], -1)
        ours = ms(lambda: kernels.attention(qu, k, v, bias, qv, p, dk ** -0.5))
        unfused = ms(lambda: kernels.ref_attention(qu, k, v, bias, qv, p, dk ** -0.5))
        sdpa = ms(lambda: torch.nn.functional.scaled_dot_product_attention(q2, k2, v, attn_mask=bias,
                                                                           scale=dk ** -0.5))
        print(f"{B:>3} {T:>4} {ours:8.3f} {unfused:8.3f} {sdpa:8.3f}")


if __name__ == "__main__":
    main()
