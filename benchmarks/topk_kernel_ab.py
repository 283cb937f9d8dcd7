"""Time the CTC log-softmax + top-k kernel (`wk_log_softmax_topk`) of several builds of the
kernel library on the same logits, in one process on one GPU, and check each against
torch.log_softmax + topk (max value error; whether >= 99.9 % of indices agree: fp16 inputs
have exact ties, where the order may differ).

    bash wenet_triton/csrc/build.sh kernels /tmp/old/libwenet_kernels.so 90   # in an old tree
    python3 benchmarks/topk_kernel_ab.py old=/tmp/old/libwenet_kernels.so \\
        new=$WENET_TRITON_CACHE/native/libwenet_kernels.so > topk.txt

Shapes: AISHELL's CTC (vocabulary 4233, rows padded to 4240) at 64 x 20 s (32,768 frames),
1 x 10 s (250), 8 x 20 s (4,000), 8 x 5 s (1,000) and 64 x 5 s (8,000), beam 10 and 20."""
import argparse
import ctypes

import torch

SHAPES = [(32768, 10, torch.float32), (32768, 20, torch.float32), (250, 10, torch.float32),
          (1000, 20, torch.float32), (4000, 10, torch.float32), (8000, 20, torch.float32),
          (32768, 10, torch.float16)]
V, LD = 4233, 4240
DTYPE_CODE = {torch.float32: 0, torch.float16: 1}


def _lib(path: str):
    lib = ctypes.CDLL(path)
    P, I = ctypes.c_void_p, ctypes.c_int
    lib.wk_log_softmax_topk.argtypes = [P, P, P, P, I, I, I, I, I, P]
    lib.wk_log_softmax_topk.restype = I
    return lib


def _time(lib, x, k, rows, iters: int) -> tuple:
    v = torch.empty(rows, k, device="cuda")
    i = torch.empty(rows, k, dtype=torch.int64, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream

    def call():
        return lib.wk_log_softmax_topk(None, v.data_ptr(), i.data_ptr(), x.data_ptr(), rows, V, LD, k,
                                       DTYPE_CODE[x.dtype], stream)
    for _ in range(3):
        if call():
            raise SystemExit("wk_log_softmax_topk failed")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, v, i


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("libs", nargs="+", help="LABEL=path/to/libwenet_kernels.so")
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args(argv)
    libs = {label: _lib(path) for label, path in (s.split("=", 1) for s in a.libs)}
    for rows, k, dt in SHAPES:
        x = (torch.randn(rows, LD, device="cuda") * 4).to(dt)
        ref_v, ref_i = torch.log_softmax(x[:, :V].float(), -1).topk(k, -1)
        cells = []
        for label, lib in libs.items():
            ms, v, i = _time(lib, x, k, rows, a.iters)
            err = (v - ref_v).abs().max().item()
            same = bool((i == ref_i).float().mean() > 0.999)
            cells.append(f"{label}: {ms * 1e3:8.1f} us {x.numel() * x.element_size() / ms / 1e9:6.2f} TB/s "
                         f"err {err:.1e} idx_same {same}")
        print(f"rows {rows} V {V} k {k} {str(dt)[6:]}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
