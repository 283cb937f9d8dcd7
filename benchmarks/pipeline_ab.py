#!/usr/bin/env python3
"""Serve one model with each serving pipeline (`ensemble`, `fused`: serving.yaml `pipeline`),
all servers up at once on 127.0.0.1, and run the same bounded concurrency sweep
(loadtest.sweep) against each in turn, `--rounds` times alternating (on a shared machine the
load of others drifts; alternating and taking medians keeps the comparison fair). Checks first
that all pipelines answer a few wavs identically. Results: OUT/<pipeline>/r<round>/sweep.csv,
OUT/summary.csv (every round) and the medians printed at the end.

    python -m benchmarks.pipeline_ab --model models/demo_zh_synth --wav-dir ../shared/data/synth_test \
        --seconds 5 --concurrency 1,4,8 --rounds 3 --out ab_out/
"""
import argparse
import contextlib
import csv
import glob
import os
import statistics
import sys

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
    p.add_argument("--config", help="serving YAML (e.g. configs/serving_gpu.yaml); pipeline is set per server")
    p.add_argument("--threads", type=int, help="engine.threads override (onnxruntime)")
    p.add_argument("--pipelines", default="ensemble,fused")
    p.add_argument("--wav-dir", required=True)
    p.add_argument("--seconds", default="5")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=30)
    p.add_argument("--out", default="pipeline_ab_out")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[:8]
    check = [(os.path.basename(f), read_audio(f)) for f in files]
    pipelines = a.pipelines.split(",")
    summary, texts = [], {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for pipeline in pipelines:
            over = {"pipeline": pipeline}
            if a.threads is not None:
                over["engine"] = {"threads": a.threads}
            out = os.path.join(a.out, pipeline)
            repo = build_repo(a.model, os.path.join(out, "repo"), a.engine, config=a.config, overrides=over)
            metrics = free_port()
            s = stack.enter_context(TritonServer(repo, free_port(), free_port(), metrics, host="127.0.0.1",
                                                 log_file=os.path.join(out, "triton.log")))
            servers[pipeline] = (s, metrics)
            texts[pipeline] = [r.text for r in transcribe_many(s.grpc_url, check, concurrency=4)]
        for rnd in range(a.rounds):
            for pipeline in pipelines if rnd % 2 == 0 else pipelines[::-1]:
                s, metrics = servers[pipeline]
                out = os.path.join(a.out, pipeline, f"r{rnd}")
                load = os.getloadavg()[0]
                sweep.main(["--server", s.grpc_url, "--metrics", f"127.0.0.1:{metrics}",
                            "--wav-dir", a.wav_dir, "--seconds", a.seconds,
                            "--concurrency", a.concurrency, "--max-requests", str(a.max_requests),
                            "--min-requests", "16", "--max-seconds", str(a.max_seconds), "--out", out])
                summary += [{"round": rnd, "pipeline": pipeline, "seconds": r["seconds"],
                             "concurrency": r["concurrency"], "infer_per_s": r["infer_per_s"],
                             "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "failures": r["failures"],
                             "load_before": f"{load:.2f}"}
                            for r in csv.DictReader(open(os.path.join(out, "sweep.csv")))]
    with open(os.path.join(a.out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    same = all(t == texts[pipelines[0]] for t in texts.values())
    print(f"transcripts of {len(check)} wavs identical across {', '.join(pipelines)}: {same}")
    print(f"medians over {a.rounds} rounds (infer/s, p50 ms, p99 ms; failures summed):")
    for pipeline in pipelines:
        for sec in a.seconds.split(","):
            for c in a.concurrency.split(","):
                rs = [r for r in summary if r["pipeline"] == pipeline and float(r["seconds"]) == float(sec)
                      and int(r["concurrency"]) == int(c)]
                if not rs:
                    continue
                med = lambda k: statistics.median(float(r[k]) for r in rs)  # noqa: E731
                per_round = ", ".join("%.2f" % float(r["infer_per_s"]) for r in rs)
                print(f"{pipeline:9s} {float(sec):g}s c={c:<4} {med('infer_per_s'):8.2f} infer/s  "
                      f"p50 {med('p50_ms'):8.1f}  p99 {med('p99_ms'):8.1f} ms  "
                      f"failures {sum(int(r['failures']) for r in rs)}  "
                      f"(infer/s per round: {per_round})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
