#!/usr/bin/env python3
"""Serve one model with each serving pipeline in turn (`ensemble`, `fused`: serving.yaml
`pipeline`) on 127.0.0.1 and run the same bounded concurrency sweep (loadtest.sweep) against
each; checks first that both answer a few wavs identically. Results: OUT/<pipeline>/sweep.csv
(+ png, log) and OUT/summary.csv.

    python -m benchmarks.pipeline_ab --model models/demo_zh_synth --wav-dir ../shared/data/synth_test \
        --seconds 5 --concurrency 1,4,8 --out ab_out/
"""
import argparse
import csv
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from loadtest import sweep  # noqa: E402
from wenet_triton.audio.frontend import read_audio  # noqa: E402
from wenet_triton.serving.client import transcribe_many  # noqa: E402
from wenet_triton.serving.repo import build_repo  # noqa: E402
from wenet_triton.serving.server import TritonServer, free_port  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "demo_zh_synth"))
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--config", help="serving YAML (e.g. configs/serving_gpu.yaml); pipeline is set per run")
    p.add_argument("--threads", type=int, help="engine.threads override (onnxruntime)")
    p.add_argument("--pipelines", default="ensemble,fused")
    p.add_argument("--wav-dir", required=True)
    p.add_argument("--seconds", default="5")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=30)
    p.add_argument("--out", default="pipeline_ab_out")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[:8]
    check = [(os.path.basename(f), read_audio(f)) for f in files]
    texts, summary = {}, []
    for pipeline in a.pipelines.split(","):
        over = {"pipeline": pipeline}
        if a.threads is not None:
            over["engine"] = {"threads": a.threads}
        out = os.path.join(a.out, pipeline)
        repo = build_repo(a.model, os.path.join(out, "repo"), a.engine, config=a.config, overrides=over)
        grpc, metrics = free_port(), free_port()
        with TritonServer(repo, free_port(), grpc, metrics, host="127.0.0.1",
                          log_file=os.path.join(out, "triton.log")) as s:
            texts[pipeline] = [r.text for r in transcribe_many(s.grpc_url, check, concurrency=4)]
            load = os.getloadavg()[0]
            t0 = time.time()
            sweep.main(["--server", s.grpc_url, "--metrics", f"127.0.0.1:{metrics}",
                               "--wav-dir", a.wav_dir, "--seconds", a.seconds,
                               "--concurrency", a.concurrency, "--max-requests", str(a.max_requests),
                               "--min-requests", "16", "--max-seconds", str(a.max_seconds),
                               "--out", out])
            print(f"{pipeline}: sweep took {time.time() - t0:.0f} s (1-min load before: {load:.2f}, "
                  f"after: {os.getloadavg()[0]:.2f})", flush=True)
        rows = list(csv.DictReader(open(os.path.join(out, "sweep.csv"))))
        summary += [{"pipeline": pipeline, "seconds": r["seconds"], "concurrency": r["concurrency"],
                     "infer_per_s": r["infer_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                     "failures": r["failures"], "load_before": f"{load:.2f}"} for r in rows]
    with open(os.path.join(a.out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    first = next(iter(texts.values()))
    same = all(t == first for t in texts.values())
    print(f"transcripts of {len(check)} wavs identical across {', '.join(texts)}: {same}")
    for r in summary:
        print(f"{r['pipeline']:9s} {float(r['seconds']):g}s c={r['concurrency']:<4} "
              f"{float(r['infer_per_s']):8.2f} infer/s  p50 {float(r['p50_ms']):8.1f}  "
              f"p99 {float(r['p99_ms']):8.1f} ms  failures {r['failures']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
