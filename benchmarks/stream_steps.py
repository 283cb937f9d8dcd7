#!/usr/bin/env python3
"""Where the time of live streaming goes, without a server: N streams send `--chunk-ms` pieces
in lockstep rounds through one `StreamDecoder` (what one Triton `streaming` instance runs per
dynamic batch), the last round ends them (attention rescoring in process). Per round it times
the front end (all of a round but the chunk-encoder steps and the search: fbank, windows,
bookkeeping; `features`: the fbank + windows part alone), the chunk-encoder steps, the
prefix-search resume and the rescoring, and writes one CSV row per stream count (+ a
stacked-bar plot with --plot).

    python3 -m benchmarks.stream_steps --streams 1,16,64,256 --backend torch_cuda \
        --out benchmarks/results/stream_steps.csv

`--fbank torch [--feature-device cuda:0]`: the batched streaming fbank (one torch fbank call
per round over every stream's new frames) instead of kaldi-native-fbank per stream;
`--search-threads N`: the resumed C++ searches of a round split over N threads.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import time
from collections import defaultdict

import numpy as np

import wenet_triton.streaming as streaming_mod
from wenet_triton.api import load_model
from wenet_triton.audio.frontend import read_audio
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.engines.streaming import open_chunk_runner
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.paths import default_model_dir
from wenet_triton.streaming import StreamDecoder

PHASES = ("frontend", "encoder", "search", "rescore")


class Timed:
    """Wraps a callable and adds its wall time to totals[name] (CUDA synchronised) and the
    process's CPU time meanwhile (all its threads) to totals[name + "_cpu"]."""
    def __init__(self, fn, totals, name, sync):
        self.fn, self.totals, self.name, self.sync = fn, totals, name, sync

    def __call__(self, *a, **k):
        self.sync()
        t, c = time.perf_counter(), time.process_time()
        out = self.fn(*a, **k)
        self.sync()
        self.totals[self.name] += time.perf_counter() - t
        self.totals[self.name + "_cpu"] += time.process_time() - c
        return out


def run(rec, decoder: StreamDecoder, wavs, streams: int, chunk: int, seconds: float, sync):
    totals = defaultdict(float)
    decoder.runner.step = Timed(decoder.runner.step, totals, "encoder", sync)
    search = decoder.search
    decoder.search = Timed(search, totals, "search", sync)
    accept_many = getattr(streaming_mod, "accept_many", None)
    if accept_many is not None:  # fbank + windows of every item of a round
        streaming_mod.accept_many = Timed(accept_many, totals, "features", sync)
    n = int(seconds * decoder.fbank_conf.sample_rate)
    audio = [np.resize(wavs[i % len(wavs)], n) for i in range(streams)]
    live = [decoder.open() for _ in range(streams)]
    rounds = (n + chunk - 1) // chunk
    t0 = time.perf_counter()
    for r in range(rounds):
        last = r == rounds - 1
        t, c = time.perf_counter(), time.process_time()
        res = decoder.advance([(s, a[r * chunk:(r + 1) * chunk], last) for s, a in zip(live, audio)])
        totals["advance"] += time.perf_counter() - t
        totals["advance_cpu"] += time.process_time() - c
        if last:
            t = time.perf_counter()
            decoder.finish([(s, p.nbest) for s, p in zip(live, res)], rec.engine)
            sync()
            totals["rescore"] += time.perf_counter() - t
            t = time.perf_counter()  # the same shapes again: without first-use costs
            decoder.finish([(s, p.nbest) for s, p in zip(live, res)], rec.engine)
            sync()
            totals["rescore_again"] += time.perf_counter() - t
    wall = time.perf_counter() - t0 - totals["rescore_again"]  # the repeat is extra work
    decoder.runner.step = decoder.runner.step.fn
    decoder.search = search
    if accept_many is not None:
        streaming_mod.accept_many = accept_many
    for x in ("", "_cpu"):
        totals["frontend" + x] = totals["advance" + x] - totals["encoder" + x] - totals["search" + x]
    chunks = streams * rounds
    row = {"streams": streams, "chunk_ms": 1000 * chunk / decoder.fbank_conf.sample_rate,
           "rounds": rounds, "wall_s": wall, "chunks_per_s": chunks / wall,
           "realtime_streams": streams * seconds / wall}
    for p in PHASES:
        row[f"{p}_ms_per_chunk"] = 1000 * totals[p] / chunks
    row["features_ms_per_chunk"] = 1000 * totals["features"] / chunks  # part of frontend
    for p in ("frontend", "features", "search"):  # CPU time of the process (all threads)
        row[f"{p}_cpu_ms_per_chunk"] = 1000 * totals[p + "_cpu"] / chunks
    row["round_ms"] = 1000 * totals["advance"] / rounds
    row["rescore_call_ms"] = 1000 * totals["rescore"]  # one call for all the streams
    row["rescore_call_again_ms"] = 1000 * totals["rescore_again"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--wav-dir", default=None, help="wavs to stream (default: the package samples)")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--chunk-ms", type=float, default=640)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--left-chunks", type=int, default=4)
    ap.add_argument("--backend", default="torch", help="torch | torch_cuda | onnxruntime "
                    "(torch_cuda: the GPU engine's chunk encoder, caches on the device)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="torch_cuda chunk encoder: float16 (default), "
                    "bfloat16, float32")
    ap.add_argument("--fbank", default="knf", choices=StreamDecoder.FBANK_IMPLS,
                    help="knf: kaldi-native-fbank per stream; torch: one batched fbank per round")
    ap.add_argument("--feature-device", default=None,
                    help="device of the batched fbank (default: --device; knf: cpu)")
    ap.add_argument("--search-threads", type=int, default=1,
                    help="threads the resumed searches of a round are split over (0: all cores)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads (torch encoder, torch fbank on the CPU); 0: torch's default")
    ap.add_argument("--rescore-cudnn", action="store_true",
                    help="cuDNN attention first in the rescoring decoder (served: memory-efficient first)")
    ap.add_argument("--out", default=None, help="CSV to write")
    ap.add_argument("--plot", action="store_true", help="also write <out>.png")
    a = ap.parse_args(argv)
    model_dir = a.model_dir or default_model_dir()
    if a.torch_threads:
        import torch
        torch.set_num_threads(a.torch_threads)
    engine = "torch_cuda" if a.device.startswith("cuda") else "onnxruntime"
    rec = load_model(model_dir, engine=engine, device=a.device)
    if hasattr(rec.engine, "dec_graphs"):  # as the served streaming model: eager rescoring
        rec.engine.dec_graphs.enabled = False
        rec.engine.fm.dec_cudnn = a.rescore_cudnn
    dec = rec.decoding
    model = ASRModel.from_spec(load_model_dir(model_dir))
    runner = open_chunk_runner(a.backend, model, a.chunk_size, a.left_chunks, rec.settings.beam_size,
                               ensure_export(model_dir, None, rec.settings.beam_size), a.device,
                               dtype=a.dtype)
    fe_device = "cpu" if a.fbank == "knf" else (a.feature_device or a.device)
    decoder = StreamDecoder(runner, rec.vocab, rec.settings, rec.fbank.conf, dec, rec.lm,
                            fbank_impl=a.fbank, feature_device=fe_device,
                            search_threads=a.search_threads)
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav"))) if a.wav_dir else None
    if not files:
        from wenet_triton.paths import SAMPLES_DIR
        files = sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.wav")))
    wavs = [read_audio(f, rec.fbank.conf.sample_rate) for f in files]
    sync = lambda: None  # noqa: E731
    if a.device.startswith("cuda"):
        import torch
        sync = torch.cuda.synchronize
    chunk = int(a.chunk_ms / 1000 * rec.fbank.conf.sample_rate)
    run(rec, decoder, wavs, 2, chunk, 2.0, sync)  # warm up
    if hasattr(runner.backend, "warmup"):  # torch_cuda: capture every batch bucket's graph now
        runner.backend.warmup(max(int(x) for x in a.streams.split(",")))
    rows = []
    for n in [int(x) for x in a.streams.split(",")]:
        row = run(rec, decoder, wavs, n, chunk, a.seconds, sync)
        rows.append(row)
        row.update(fbank=a.fbank, feature_device=fe_device, search_threads=decoder.search_threads)
        print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if a.plot:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(7, 4))
            x = np.arange(len(rows))
            bottom = np.zeros(len(rows))
            for p in PHASES:
                v = np.array([r[f"{p}_ms_per_chunk"] for r in rows])
                ax.bar(x, v, bottom=bottom, label=p)
                bottom += v
            ax.set_xticks(x, [str(r["streams"]) for r in rows])
            ax.set_xlabel("streams in one batch")
            ax.set_ylabel("ms per chunk (per stream)")
            ax.set_title(f"streaming, {a.chunk_ms:g} ms chunks, {a.backend} on {a.device}")
            ax.legend()
            fig.tight_layout()
            fig.savefig(os.path.splitext(a.out)[0] + ".png", dpi=120)


if __name__ == "__main__":
    main()
