"""Where does the GPU engine's time go? torch.profiler over one bucket, top kernels by CUDA time,
plus which SDPA backend the attention calls can use. Run on the GPU machine:
    PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 [--engine torch_cuda_cublas]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from wenet_triton import bench
from wenet_triton.engines import kernels
from wenet_triton.engines.cuda import CudaEngine
from wenet_triton.engines.export import export_settings
from wenet_triton.model import synthetic
from wenet_triton.model.conformer import ASRModel


def _ops(prof, top):
    ops = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith(("aten::", "wenet::"))]
    ops.sort(key=lambda e: -e.device_time_total)
    for e in ops[:top]:
        print(f"{e.device_time_total / 1000:8.2f} ms  x{e.count:<4} {e.key:32} {str(e.input_shapes)[:110]}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--engine", default="torch_cuda", help="a `wenet-triton bench` torch_cuda variant: torch_cuda "
                   "(the engine's defaults, Triton-lang kernels where they apply), torch_cuda_cublas (none), "
                   "torch_cuda_conv (the defaults + the opt-in implicit-GEMM convs), torch_cuda_fp8, ...")
    a = p.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    kernels.load()
    spec = synthetic.random_spec()
    eng = CudaEngine(ASRModel.from_spec(spec), export_settings(spec, ASRModel.from_spec(spec)), "cuda", "float16",
                     cuda_graphs=False, **bench.triton_kernels(a.engine))
    x, lens = bench._inputs(a.batch, a.seconds, 1, "cuda")[0]
    hy = bench._hyps(a.batch, 10, a.seconds, spec, "cuda")
    for _ in range(3):
        enc = eng.encode_tensors(x, lens)
        eng.rescore_tensors(enc[0], enc[1], *hy)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        enc = eng.encode_tensors(x, lens)
        torch.cuda.synchronize()
    print("== encoder", a.batch, "x", a.seconds, "s: aten ops by device time, with input shapes")
    _ops(prof, a.top)
    print("== encoder kernels (Triton kernels show here, not among the aten ops)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top, max_name_column_width=70))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        eng.rescore_tensors(enc[0], enc[1], *hy)
        torch.cuda.synchronize()
    print("== decoder: aten ops by device time, with input shapes")
    _ops(prof, a.top)
    print("== decoder kernels")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))
    # can the attention shapes run on the fused SDPA backends?
    from torch.nn.attention import SDPBackend, sdpa_kernel
    B, T, h = a.batch, 500, 4
    q = torch.randn(B, h, T, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(B, h, T, 128, device="cuda", dtype=torch.float16)
    v = torch.randn(B, h, T, 64, device="cuda", dtype=torch.float16)
    m = torch.ones(B, 1, 1, T, dtype=torch.bool, device="cuda")
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        for mask in (None, m):
            try:
                with sdpa_kernel([be]):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125)
                print(be, "mask" if mask is not None else "nomask", "OK")
            except RuntimeError as e:
                print(be, "mask" if mask is not None else "nomask", "NO:", str(e).splitlines()[0][:150])


if __name__ == "__main__":
    main()
