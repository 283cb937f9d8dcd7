"""Model-level benchmark: encoder and decoder latency per engine, batch and audio length.

Engines in one run: PyTorch eager fp32 (WeNet's model math as WeNet runs it = "original"),
PyTorch eager fp16 autocast, onnxruntime CPU (small configs only), and the torch_cuda
engine (fp16, fused kernels, CUDA graphs) with and without the custom kernels.
Latency is median / p90 over warm, rotating inputs, timed with CUDA events for GPU engines.
Writes bench.csv and PNG plots.
"""
from __future__ import annotations

import copy
import csv
import logging
import os
import tempfile
import time
from typing import List

import numpy as np
import torch

from wenet_triton.engines import OnnxEngine, fp8
from wenet_triton.engines.cuda import CudaEngine
from wenet_triton.engines.export import export_onnx_from_model, export_settings
from wenet_triton.model.checkpoint import ModelSpec, load_model_dir
from wenet_triton.model.conformer import ASRModel, ExportDecoder, ExportEncoder
from wenet_triton.model.synthetic import random_spec

log = logging.getLogger(__name__)

def frames(seconds: float) -> int:
    return 1 + (int(seconds * 16000) - 400) // 160


def _time_gpu(fn, iters: int, warmup: int = 3) -> List[float]:
    for _ in range(warmup):
        fn(0)
    torch.cuda.synchronize()
    out = []
    for i in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def gpu_ms(fn, iters: int = 20) -> float:
    """Mean milliseconds of fn() on the GPU (CUDA events, after warm-up)."""
    return float(np.mean(_time_gpu(lambda i: fn(), iters)))


def _time_cpu(fn, iters: int, warmup: int = 1) -> List[float]:
    for _ in range(warmup):
        fn(0)
    out = []
    for i in range(iters):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _inputs(B: int, seconds: float, n_sets: int, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = frames(seconds)
    sets = []
    for _ in range(n_sets):
        x = torch.randn(B, T, 80, generator=g) * 2 + 12
        lens = torch.full((B,), T, dtype=torch.int32)
        sets.append((x.to(device), lens.to(device)))
    return sets


def _hyps(B: int, beam: int, seconds: float, spec: ModelSpec, device, seed=0):
    """Decoder inputs for a typical transcript length (~4 tokens/s of Mandarin)."""
    g = torch.Generator().manual_seed(seed)
    L = max(2, int(4 * seconds))
    h = torch.randint(2, spec.vocab_size - 1, (B, beam, L + 2), generator=g)
    h[:, :, 0] = spec.sos
    h[:, :, -1] = spec.eos
    lens = torch.full((B, beam), L + 1, dtype=torch.int32)
    return (h.to(device), lens.to(device), h.flip(-1).contiguous().to(device),
            torch.randn(B, beam, generator=g).to(device))


def triton_kernels(eng: str) -> dict:
    """The torch_cuda variants' Triton-lang kernels: `torch_cuda` the engine's defaults (on
    where they apply, unless WENET_TRITON_FUSED_* = 0), `torch_cuda_cublas` and
    `torch_cuda_nokernels` none, `torch_cuda_silu` the SiLU GEMM only, `torch_cuda_fused` the
    five on by default whatever the environment, `torch_cuda_conv` the defaults and the opt-in
    implicit-GEMM subsampling convolutions (triton_conv), `torch_cuda_fp8` the defaults with
    the encoder's FFNs in FP8 (engines/fp8.py; scales calibrated on the benchmark's own random
    features)."""
    names = ("fused_silu", "fused_ffn", "fused_vocab", "fused_conv1", "fused_ctc")
    if eng in ("torch_cuda", "torch_cuda_fp8"):
        return {}
    if eng == "torch_cuda_conv":
        return {"fused_conv": True}
    if eng == "torch_cuda_silu":
        return {n: n == "fused_silu" for n in names}
    if eng in ("torch_cuda_cublas", "torch_cuda_nokernels"):
        return dict.fromkeys(names + ("fused_conv",), False)
    if eng == "torch_cuda_fused":
        return dict.fromkeys(names, True)
    raise ValueError(f"unknown bench engine {eng}")


def run(out_dir: str, models: List[str], batches: List[int], seconds: List[float],
        engines: List[str], iters: int = 20, ort_max_batch: int = 4, ort_max_seconds: float = 10,
        beam: int = 10, device: str = "cuda") -> str:
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    dev = device
    gpu = dev.startswith("cuda")
    timer = _time_gpu if gpu else _time_cpu
    for mname in models:
        spec = random_spec() if mname == "aishell" else load_model_dir(mname)
        label = "aishell_12x256" if mname == "aishell" else os.path.basename(mname.rstrip("/"))
        base = ASRModel.from_spec(spec)
        settings = export_settings(spec, base, beam)
        ort_dir = None
        for eng in engines:
            log.info("model %s engine %s", label, eng)
            if eng.startswith("eager"):
                model = copy.deepcopy(base).to(dev)
                enc_m, dec_m = ExportEncoder(model, beam), ExportDecoder(model, spec.ctc_weight, spec.reverse_weight)
                amp = eng == "eager_fp16"

                def enc_fn(x, l, enc_m=enc_m, amp=amp):
                    with torch.inference_mode(), torch.autocast(dev.split(":")[0], torch.float16, enabled=amp):
                        return enc_m(x, l)

                def dec_fn(e, el, h, hl, rh, c, dec_m=dec_m, amp=amp):
                    with torch.inference_mode(), torch.autocast(dev.split(":")[0], torch.float16, enabled=amp):
                        return dec_m(e, el, h, hl, rh, c)
            elif eng.startswith("torch_cuda"):
                scales = fp8.calibrate(copy.deepcopy(base), _inputs(8, 10, 1, dev), dev) \
                    if eng == "torch_cuda_fp8" else None
                ce = CudaEngine(copy.deepcopy(base), settings, dev, "float16" if gpu else "float32",
                                use_kernels=gpu and eng != "torch_cuda_nokernels", cuda_graphs=gpu,
                                fp8_scales=scales, **triton_kernels(eng))
                enc_fn = ce.encode_tensors
                dec_fn = ce.rescore_tensors
            elif eng == "onnxruntime_cpu":
                if ort_dir is None:  # outside out_dir: ONNX files are large
                    ort_dir = tempfile.mkdtemp(prefix=f"onnx_{label}_")
                    export_onnx_from_model(base, copy.deepcopy(settings), ort_dir, verify=False)
                oe = OnnxEngine(ort_dir)
            else:
                raise ValueError(f"unknown bench engine {eng}")
            for B in batches:
                for sec in seconds:
                    cpu = eng == "onnxruntime_cpu"
                    if cpu and (B > ort_max_batch or sec > ort_max_seconds):
                        continue
                    d = "cpu" if cpu else dev
                    ins = _inputs(B, sec, 3, d)
                    hy = _hyps(B, beam, sec, spec, d)
                    try:
                        if cpu:
                            np_ins = [(x.numpy(), l.numpy()) for x, l in ins]
                            enc0 = oe.encode(*np_ins[0])
                            np_h = [t.numpy() for t in hy]
                            e_ms = _time_cpu(lambda i: oe.encode(*np_ins[i % 3]), max(3, iters // 5))
                            d_ms = _time_cpu(lambda i: oe.rescore(enc0["encoder_out"], enc0["encoder_out_lens"], *np_h),
                                             max(3, iters // 5))
                        else:
                            enc0 = enc_fn(*ins[0])
                            e_ms = timer(lambda i: enc_fn(*ins[i % 3]), iters)
                            eo, el = enc0[0], enc0[1]
                            d_ms = timer(lambda i: dec_fn(eo, el, *hy), iters)
                    except torch.cuda.OutOfMemoryError:
                        log.warning("OOM: %s %s B=%d %gs", label, eng, B, sec)
                        torch.cuda.empty_cache()
                        continue
                    em, dm = float(np.median(e_ms)), float(np.median(d_ms))
                    rows.append({"model": label, "engine": eng, "batch": B, "seconds": sec,
                                 "enc_ms_p50": em, "enc_ms_p90": float(np.percentile(e_ms, 90)),
                                 "dec_ms_p50": dm, "dec_ms_p90": float(np.percentile(d_ms, 90)),
                                 "audio_s_per_s": B * sec / ((em + dm) / 1000)})
                    log.info("%s", rows[-1])
            if gpu:
                torch.cuda.empty_cache()
    path = os.path.join(out_dir, "bench.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    _add_speedups(rows)
    with open(os.path.join(out_dir, "bench_speedup.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out_dir)
    return path


def load_csv(path: str):
    """bench CSV -> rows with numeric fields (for re-plotting)."""
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        for k in ("batch",):
            r[k] = int(r[k])
        for k in ("seconds", "enc_ms_p50", "enc_ms_p90", "dec_ms_p50", "dec_ms_p90", "audio_s_per_s"):
            r[k] = float(r[k])
    return rows


def _add_speedups(rows):
    ref = {(r["model"], r["batch"], r["seconds"]): r for r in rows if r["engine"] == "eager_fp32"}
    for r in rows:
        b = ref.get((r["model"], r["batch"], r["seconds"]))
        r["speedup_vs_eager_fp32"] = ((b["enc_ms_p50"] + b["dec_ms_p50"]) / (r["enc_ms_p50"] + r["dec_ms_p50"])
                                      if b else "")


def plot(rows, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = sorted({r["engine"] for r in rows})
    colors = {e: f"C{i}" for i, e in enumerate(engines)}  # one colour per engine everywhere
    for model in sorted({r["model"] for r in rows}):
        secs = sorted({r["seconds"] for r in rows if r["model"] == model})
        fig, axes = plt.subplots(2, len(secs), figsize=(5 * len(secs), 8), squeeze=False)
        for j, sec in enumerate(secs):
            for eng in sorted({r["engine"] for r in rows}):
                pts = sorted((r["batch"], r["enc_ms_p50"] + r["dec_ms_p50"], r["audio_s_per_s"])
                             for r in rows if r["model"] == model and r["engine"] == eng and r["seconds"] == sec)
                if not pts:
                    continue
                b, lat, thr = zip(*pts)
                axes[0][j].plot(b, lat, marker="o", label=eng, color=colors[eng])
                axes[1][j].plot(b, thr, marker="o", label=eng, color=colors[eng])
            for ax, yl in ((axes[0][j], "encoder+decoder latency p50 (ms)"),
                           (axes[1][j], "audio seconds / second")):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("batch")
                ax.set_ylabel(yl)
                ax.set_title(f"{model}, {sec:g} s utterances")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][j].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"bench_{model}.png"), dpi=90)
        plt.close(fig)
