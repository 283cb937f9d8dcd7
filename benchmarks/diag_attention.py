# ruff: noqa: E501  (a diagnostic script, kept as it was run)
"""Why does an attention call fall back to SDPA's math path, and what does the TF32 GEMM
setting do? Prints SDPA's own reasons and times the variants (GPU machine)."""
import warnings

import torch
import torch.nn.functional as F

from wenet_triton.engines.cuda import CudaEngine, linear_f32
from wenet_triton.engines.export import export_settings
from wenet_triton.model import synthetic
from wenet_triton.model.conformer import ASRModel


def timeit(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / n


spec = synthetic.random_spec()
eng = CudaEngine(ASRModel.from_spec(spec), export_settings(spec, ASRModel.from_spec(spec)), "cuda", "float16", cuda_graphs=False)
fm = eng.fm
B, T, D, h, dk = 64, 512, 256, 4, 64
y = torch.randn(B, T, D, device="cuda", dtype=torch.float16)
p = fm.layers[0][0][1][2]
pe = torch.randn(T, D, device="cuda", dtype=torch.float16)
pe_proj = F.linear(pe, p["w_pos"])
valid = torch.arange(T, device="cuda")[None] < torch.randint(300, T + 1, (B,), device="cuda")[:, None]
mask = valid[:, None, None, :]
out = F.linear(y, p["w_qkv"], p["b_qkv"])
q = out[..., : 2 * D].view(B, T, h, 2 * dk).transpose(1, 2)
k = torch.cat([out[..., 2 * D:3 * D].view(B, T, h, dk), pe_proj.view(1, T, h, dk).expand(B, T, h, dk)], -1).transpose(1, 2)
v = out[..., 3 * D:].view(B, T, h, dk).transpose(1, 2)
print("strides q", q.stride(), "k", k.stride(), "v", v.stride())
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for name, args in (("views", (q, k, v)), ("contig", (q.contiguous(), k.contiguous(), v.contiguous()))):
            for mname, m in (("boolmask", mask), ("floatmask", torch.zeros(B, 1, 1, T, device="cuda", dtype=torch.float16).masked_fill(~mask, -30000.0))):
                try:
                    with sdpa_kernel([be]):
                        t = timeit(lambda: F.scaled_dot_product_attention(*args, attn_mask=m, scale=0.125))
                    print(be, name, mname, f"{t * 1000:.0f} us")
                except RuntimeError:
                    print(be, name, mname, "NO")
    t = timeit(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125))
    print("default backend choice", f"{t * 1000:.0f} us")
    seen = set()
    for x in w:
        msg = str(x.message).splitlines()[0][:200]
        if msg not in seen:
            seen.add(msg)
            print("WARN", msg)
m = torch.backends.cuda.matmul
print("fp32_precision" , getattr(m, "fp32_precision", None), "allow_tf32", m.allow_tf32, torch.get_float32_matmul_precision())
x = torch.randn(B * T, D, device="cuda", dtype=torch.float16)
print("linear_f32 (ctx)", f"{timeit(lambda: linear_f32(x, fm.ctc_w, fm.ctc_b)) * 1000:.0f} us")
torch.set_float32_matmul_precision("high")
print("after set_float32_matmul_precision(high):", getattr(m, "fp32_precision", None), m.allow_tf32)
print("plain addmm high", f"{timeit(lambda: torch.addmm(fm.ctc_b, x.float(), fm.ctc_w.t())) * 1000:.0f} us")
torch.set_float32_matmul_precision("highest")
print("plain addmm highest", f"{timeit(lambda: torch.addmm(fm.ctc_b, x.float(), fm.ctc_w.t())) * 1000:.0f} us")
print("fp16 F.linear", f"{timeit(lambda: F.linear(x, fm.ctc_w.half(), fm.ctc_b.half())) * 1000:.0f} us")
