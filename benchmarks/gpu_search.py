#!/usr/bin/env python3
"""The CTC prefix beam search of a batch on the GPU (csrc/ctc_search_gpu.cu) against the C++
search (one thread and a thread pool, including the top-k copy to the host it needs), with
and without the model's n-gram LM, on the top-k of real encoder output (torch_cuda, fp16) of
fixed-length utterances; torchaudio's cuda_ctc_decoder (no LM, its own pruning) as a speed
reference where installed. Checks that the GPU n-best token ids equal the C++ search's.
Writes gpu_search.csv and gpu_search.png to --out. --phases: a profiling build of the kernels
(-DWKS_PHASE_TIMES) also splits the GPU search's time per frame into its phases
(search_phases.csv: parents, candidates with the LM, ranking, gather, trie, n-best).

    .venv/bin/python benchmarks/gpu_search.py --wav-dir WAVS --batches 1 8 32 64 --out DIR
"""
import argparse
import csv
import ctypes
import glob
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from wenet_triton.audio.frontend import Fbank, pad_feats, read_audio
from wenet_triton.decode.native import prefix_beam_search_batch
from wenet_triton.decode.options import load_lm, resolve
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines import gpu_search, kernels, open_engine
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.paths import SAMPLES_DIR, default_model_dir


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_dir())
    p.add_argument("--wav-dir", default=SAMPLES_DIR)
    p.add_argument("--seconds", type=float, default=5.0, help="each utterance cut/tiled to this length")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--threads", type=int, default=8, help="threads of the pooled C++ search")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="gpu_search_out")
    p.add_argument("--plot-csv", help="only plot this CSV of an earlier run (into --out)")
    p.add_argument("--phases", action="store_true",
                   help="build and use the kernels with the search's phase timers (slightly slower)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    phase_rows = []
    if a.phases:  # before anything loads the kernels
        os.environ["NVCC_FLAGS"] = "-DWKS_PHASE_TIMES"
        lib = os.path.join(os.path.abspath(a.out), "libwenet_kernels_phases.so")
        os.environ["WENET_KERNELS_LIB"] = kernels.build(lib)
    if a.plot_csv:
        with open(a.plot_csv) as f:
            rows = [{k: (v if k in ("lm", "nbest_identical", "top1_identical") else float(v))
                     for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        return plot(rows, a)
    dec = resolve(a.model)
    engine_dir = ensure_export(a.model, beam_size=dec.beam_size)
    eng = open_engine(engine_dir, "torch_cuda", "cuda", "float16", a.model)
    vocab = Vocab.from_engine_dir(engine_dir, eng.settings)
    lm = load_lm(dec.lm, vocab.tokens) if dec.lm else None
    glm = gpu_search.GpuLM(lm, eng.device) if lm is not None else None
    fb = Fbank(eng.settings.fbank)
    n = int(a.seconds * eng.settings.fbank.sample_rate)
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))
    if not files:
        raise SystemExit(f"no .wav files in --wav-dir {a.wav_dir}")
    wavs = [np.resize(read_audio(f), n).astype(np.float32) for f in files]
    pool = ThreadPoolExecutor(a.threads)
    rows = []
    try:
        import torchaudio.models.decoder as tad
        cuda_dec = tad.cuda_ctc_decoder(vocab.tokens, nbest=1, beam_size=dec.beam_size, blank_skip_threshold=0.95)
    except Exception as e:  # noqa: BLE001 - the reference is optional
        print(f"torchaudio cuda_ctc_decoder not available ({e})")
        cuda_dec = None
    for B in a.batches:
        batch = [wavs[i % len(wavs)] for i in range(B)]
        x, lens = pad_feats([fb(w) for w in batch])
        enc, out_lens, logp, topv, topi = eng.encode_tensors(torch.from_numpy(x).cuda(), torch.from_numpy(lens).cuda())
        enc, topv, topi = enc.clone(), topv.float().clone(), topi.clone()
        out_lens, logp = out_lens.clone(), logp.float().clone()
        beam = dec.beam_size
        for name, m, g, w in [("no_lm", None, None, (0.0, 0.0)), ("lm", lm, glm, (dec.lm_weight, dec.length_bonus))]:
            if name == "lm" and m is None:
                continue

            def cpp1():
                return prefix_beam_search_batch(topv.cpu().numpy(), topi.cpu().numpy(), out_lens.cpu().numpy(),
                                                beam, 0, m, *w)

            def cppn():
                v, i, ln = topv.cpu().numpy(), topi.cpu().numpy(), out_lens.cpu().numpy()
                bounds = np.linspace(0, B, min(a.threads, B) + 1).round().astype(int).tolist()
                fs = [pool.submit(prefix_beam_search_batch, v[s:e], i[s:e], ln[s:e], beam, 0, m, *w)
                      for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
                return [h for f in fs for h in f.result()]

            def gpu():
                return gpu_search.ctc_search(topv, topi, out_lens, beam, 0, g, *w)

            ms1, want = timed(cpp1, a.reps)
            msn, _ = timed(cppn, a.reps)
            if a.phases:
                phase_cycles(reset=True)
            msg, got = timed(gpu, a.reps)
            if a.phases:
                phase_rows += phase_split(phase_cycles(), msg, int(out_lens.max()), B, name, a.seconds)
            if name == "lm" or lm is None:  # the steps after the search in the fused model, on the GPU

                def after_search(found=got, w_lm=dec.lm_rescore_weight if m is not None else 0.0):
                    s = eng.settings
                    best, score = eng.rescore_tensors(enc, out_lens, *gpu_search.rescoring_tensors(
                        found, beam, s.sos, s.eos))
                    return gpu_search.best_tokens(found, gpu_search.pick_rescored(found, score, best, w_lm))

                msr, _ = timed(after_search, a.reps)
            got = got.to_lists()
            same = sum([h[0] for h in x] == [h[0] for h in y] for x, y in zip(got, want))
            top1 = sum(x[0][0] == y[0][0] for x, y in zip(got, want))
            row = {"batch": B, "seconds": a.seconds, "lm": name, "cpp_1thread_ms": round(ms1, 3),
                   f"cpp_{a.threads}threads_ms": round(msn, 3), "gpu_ms": round(msg, 3),
                   "nbest_identical": f"{same}/{B}", "top1_identical": f"{top1}/{B}"}
            if name == "lm" or lm is None:
                row["gpu_rescore_pick_ms"] = round(msr, 3)
            if name == "no_lm" and cuda_dec is not None:
                lp = logp.contiguous()
                try:
                    msr, _ = timed(lambda: cuda_dec(lp, out_lens.to(torch.int32)), a.reps)
                    row["torchaudio_cuda_ctc_ms"] = round(msr, 3)
                except Exception as e:  # noqa: BLE001 - the reference is optional
                    print(f"cuda_ctc_decoder failed: {e}")
                    cuda_dec = None
            print(row, flush=True)
            rows.append(row)
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with open(os.path.join(a.out, "gpu_search.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)
    if phase_rows:
        with open(os.path.join(a.out, "search_phases.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(phase_rows[0]))
            wr.writeheader()
            wr.writerows(phase_rows)
    plot(rows, a)


PHASES = ("parents", "candidates_lm", "ranking", "gather", "trie", "nbest")


def phase_cycles(reset: bool = False):
    """The profiling build's cycle sums per phase (all blocks, all launches since the reset)."""
    buf = (ctypes.c_ulonglong * 8)()
    torch.cuda.synchronize()
    kernels._check(kernels.load().lib.wk_ctc_search_phase_cycles(buf, int(reset)), "phase cycles")
    return list(buf)[:len(PHASES)]


def phase_split(cycles, ms, frames, B, lm, seconds):
    """Each phase's share of the cycles, as µs per frame of the measured search time."""
    total = max(sum(cycles), 1)
    rows = [{"batch": B, "seconds": seconds, "lm": lm, "phase": n, "share": round(c / total, 4),
             "us_per_frame": round(ms * 1e3 * c / total / max(frames, 1), 3)} for n, c in zip(PHASES, cycles)]
    print("phases:", ", ".join(f"{r['phase']} {r['us_per_frame']} µs" for r in rows), flush=True)
    return rows


def plot(rows, a):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot (run again with --plot-csv CSV where it is)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, ("no_lm", "lm")):
        rs = [r for r in rows if r["lm"] == name]
        if not rs:
            continue
        bs = [r["batch"] for r in rs]
        for key, label in (("cpp_1thread_ms", "C++ search, 1 thread"),
                           (f"cpp_{a.threads}threads_ms", f"C++ search, {a.threads} threads"),
                           ("gpu_ms", "GPU search (this project)"),
                           ("torchaudio_cuda_ctc_ms", "torchaudio cuda_ctc_decoder (no LM)")):
            if key in rs[0]:
                ax.plot(bs, [r[key] / r["batch"] for r in rs], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("utterances per batch")
        ax.set_title(f"{a.seconds:g} s utterances, {'with the n-gram LM' if name == 'lm' else 'no LM'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per utterance")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "gpu_search.png"), dpi=120)


if __name__ == "__main__":
    main()
