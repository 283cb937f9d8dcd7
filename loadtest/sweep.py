#!/usr/bin/env python3
"""Concurrency sweep of the `attention_rescoring` ensemble with tritonclient (gRPC, asyncio):
fixed-length utterances (wavs tiled/cropped to N seconds), for each concurrency the
throughput (infer/s, audio s/s), latency p50/p90/p99 and failures; CSV + plot, plus the
per-model queue/compute split from Triton's metrics port. Bounded in requests and time.

    python3 -m loadtest.sweep --server 127.0.0.1:8001 --metrics 127.0.0.1:8002 \
        --wav-dir wavs/ --seconds 5 --concurrency 1,8,32,64 --out out/

--server and --metrics take several endpoints (comma-separated): requests go round robin over
the servers (retrying UNAVAILABLE on the next one) and the metrics of all are added up; the
`retried` column counts requests that needed a retry.
"""
import argparse
import csv
import glob
import os
import re
import sys
import time

import numpy as np

from loadtest.metrics import delta, scrape, summarize
from wenet_triton.audio.frontend import read_audio
from wenet_triton.serving.client import transcribe_many, wait_until_ready


def fixed_length(wavs, seconds, rate=16000):
    n = int(seconds * rate)
    return [np.resize(w, n).astype(np.float32) for w in wavs]  # tiles short wavs, crops long


def run(a):
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[: a.max_wavs]
    if not files:
        sys.exit(f"no wavs in {a.wav_dir}")
    base = [read_audio(f) for f in files]
    os.makedirs(a.out, exist_ok=True)
    wait_until_ready(a.server, a.wait)
    rows = []
    for sec in [float(s) for s in a.seconds.split(",")]:
        wavs = fixed_length(base, sec)
        # warm-up at the highest concurrency: engines build their batch buckets (CUDA graphs)
        cmax = max(int(x) for x in a.concurrency.split(","))
        transcribe_many(a.server, [(str(i), wavs[i % len(wavs)]) for i in range(min(4 * cmax, 512))], cmax,
                        connections=a.connections)
        for c in [int(x) for x in a.concurrency.split(",")]:
            n = min(max(a.min_requests, c * a.per_worker), a.max_requests)
            items = [(str(i), wavs[i % len(wavs)]) for i in range(n)]
            before = scrape(a.metrics) if a.metrics else None
            t0 = time.perf_counter()
            replies = transcribe_many(a.server, items, c, timeout=a.timeout, connections=a.connections)
            wall = time.perf_counter() - t0
            lat = np.array([r.seconds for r in replies]) * 1000
            fails = sum(r.error is not None or not (r.text or "").strip() for r in replies)
            retried = sum(r.attempts > 1 for r in replies)
            errs = {r.error for r in replies if r.error}
            if errs:
                print("errors:", list(errs)[:2], flush=True)
            row = {"seconds": sec, "concurrency": c, "requests": n, "failures": fails, "retried": retried,
                   "infer_per_s": n / wall, "audio_s_per_s": n * sec / wall,
                   "p50_ms": np.percentile(lat, 50), "p90_ms": np.percentile(lat, 90),
                   "p99_ms": np.percentile(lat, 99)}
            if before is not None:
                for model, m in summarize(delta(before, scrape(a.metrics))).items():
                    row[f"{model}_batch"] = m["avg_batch"]
                    row[f"{model}_queue_ms"] = m["queue_ms"]
                    row[f"{model}_compute_ms"] = m["compute_ms"]
            rows.append(row)
            print(f"{sec:4.0f}s c={c:<4} {row['infer_per_s']:8.1f} infer/s  {row['audio_s_per_s']:9.0f} audio-s/s  "
                  f"p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  failures {fails}", flush=True)
            if wall > a.max_seconds:
                print(f"stopping this length: {wall:.0f} s > --max-seconds", flush=True)
                break
    write_csv(rows, os.path.join(a.out, "sweep.csv"))
    plot(rows, os.path.join(a.out, "sweep.png"))
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, sec in enumerate(sorted({r["seconds"] for r in rows})):
        rs = [r for r in rows if r["seconds"] == sec]
        thr = [r["infer_per_s"] for r in rs]
        for j, (q, style) in enumerate((("p50_ms", "-o"), ("p99_ms", "--s"))):
            ax[0].plot(thr, [r[q] for r in rs], style, color=f"C{i}", label=f"{sec:g} s {q[:3]}")
        ax[1].plot([r["concurrency"] for r in rs], thr, "-o", color=f"C{i}", label=f"{sec:g} s")
        for r in rs:
            ax[0].annotate(str(r["concurrency"]), (r["infer_per_s"], r["p99_ms"]), fontsize=7)
    ax[0].set_xlabel("throughput (infer/s)")
    ax[0].set_ylabel("latency (ms)")
    ax[0].set_yscale("log")
    ax[0].set_title("latency vs throughput (labels: concurrency)")
    ax[1].set_xlabel("concurrency")
    ax[1].set_ylabel("infer/s")
    ax[1].set_xscale("log", base=2)
    for x in ax:
        x.grid(True, alpha=0.3)
        x.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


LOG_LINE = re.compile(r"^\s*([\d.]+)s c=(\d+)\s+([\d.]+) infer/s\s+([\d.]+) audio-s/s\s+p50\s+([\d.]+)"
                      r"\s+p99\s+([\d.]+) ms\s+failures (\d+)")


def rows_from_log(path):
    """Rows (no p90, no per-model metrics) from the lines a sweep printed, for when only
    its log survived (e.g. a run cut off before the CSV came back)."""
    rows = []
    for line in open(path):
        m = LOG_LINE.match(line)
        if m:
            sec, c, ips, aps, p50, p99, fails = m.groups()
            rows.append({"seconds": float(sec), "concurrency": int(c), "failures": int(fails),
                         "infer_per_s": float(ips), "audio_s_per_s": float(aps),
                         "p50_ms": float(p50), "p99_ms": float(p99)})
    if not rows:
        sys.exit(f"no sweep lines in {path}")
    return rows


def write_csv(rows, path):
    keys = list(rows[0]) + sorted({k for r in rows for k in r} - set(rows[0]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="127.0.0.1:8001", help="gRPC HOST:PORT, several comma-separated")
    p.add_argument("--metrics", default="127.0.0.1:8002",
                   help="metrics host:port, several comma-separated (added up; '' to skip)")
    p.add_argument("--wav-dir", help="wavs to send (tiled/cropped to each length)")
    p.add_argument("--from-log", help="only rebuild sweep.csv + sweep.png in --out from a sweep log")
    p.add_argument("--max-wavs", type=int, default=50)
    p.add_argument("--seconds", default="5", help="comma-separated utterance lengths")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--per-worker", type=int, default=8, help="requests per concurrent client")
    p.add_argument("--min-requests", type=int, default=32)
    p.add_argument("--max-requests", type=int, default=4000)
    p.add_argument("--max-seconds", type=float, default=120, help="stop a length once a step took longer")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--connections", type=int, default=1,
                   help="gRPC connections per server (one reaches one guard worker: give at least "
                   "the server's --guard-workers, e.g. 8, to load all of them)")
    p.add_argument("--wait", type=float, default=300)
    p.add_argument("--out", default="sweep_out")
    a = p.parse_args(argv)
    if a.from_log:
        rows = rows_from_log(a.from_log)
        os.makedirs(a.out, exist_ok=True)
        write_csv(rows, os.path.join(a.out, "sweep.csv"))
        plot(rows, os.path.join(a.out, "sweep.png"))
        return
    if not a.wav_dir:
        p.error("--wav-dir is required")
    run(a)


if __name__ == "__main__":
    main()
