#!/usr/bin/env python3
"""Sweep of concurrent real-time streams against the `streaming` model: for each N, N
microphones each send streams back to back (wavs tiled/cropped to --seconds) for about
--duration seconds, every chunk at real-time pace; the first stream of each starts at a
random offset within one stream, so ends (and their attention rescoring) are spread as in a
steady load. Per N: chunk latency p50/p99, first-partial and final latency p50/p99, how many
streams fell behind real time (a chunk went out more than one chunk late: the server did not
keep up), and from Triton's statistics the batches the model ran (streams per batch, compute
ms per batch). CSV + plot. Bounded: --duration per N, and the sweep stops after the first N
at which streams fell behind (--keep-going to go on) or once a round took longer than
--max-seconds.

    python3 -m loadtest.stream_sweep --server 127.0.0.1:8001 --wav-dir wavs/ \
        --streams 1,4,8,16,32 --seconds 8 --duration 30 --chunk-ms 640 --out stream_sweep_out/
"""
import argparse
import glob
import os
import random
import sys
import time

from loadtest.sweep import fixed_length, write_csv
from wenet_triton.audio.frontend import read_audio
from wenet_triton.serving.stream_client import MODEL, TRANSPORTS, latency_summary, stream_many, wait_until_ready


def model_stats(url):
    """(requests, batches, compute ns) of the streaming model so far."""
    import tritonclient.grpc as grpcclient

    st = grpcclient.InferenceServerClient(url).get_inference_statistics(MODEL, as_json=True)
    m = st["model_stats"][0]
    compute = sum(int(m["inference_stats"].get(k, {}).get("ns", 0))
                  for k in ("compute_input", "compute_infer", "compute_output"))
    return int(m.get("inference_count", 0)), int(m.get("execution_count", 0)), compute


def _stream_part(server, items, concurrency, chunk, delays, timeout, transport):
    random.seed()  # sequence ids are random: each process its own
    return stream_many(server, items, concurrency, chunk, realtime=True, start_delays=delays,
                       timeout=timeout, transport=transport)


def _stream_in_procs(a, items, n, chunk, delays):
    """The microphones split over --procs client processes (one asyncio loop each: one
    Python process cannot send thousands of real-time chunks a second); replies in order."""
    procs = max(1, min(a.procs, n))
    if procs == 1:
        return stream_many(a.server, items, n, chunk, realtime=True, start_delays=delays,
                           timeout=a.timeout, transport=a.transport)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # microphone i streams items i, i + n, i + 2n, ...: give each process whole microphones
    parts = [[k for k in range(len(items)) if k % n % procs == p] for p in range(procs)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as ex:
        futs = [ex.submit(_stream_part, a.server, [items[k] for k in ks],
                          len({k % n for k in ks}), chunk, [delays[k] for k in ks], a.timeout,
                          a.transport)
                for ks in parts]
        out = [None] * len(items)
        for ks, f in zip(parts, futs):
            for k, r in zip(ks, f.result()):
                out[k] = r
    return out


def run(a):
    files = sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[: a.max_wavs]
    if not files:
        sys.exit(f"no wavs in {a.wav_dir}")
    wavs = fixed_length([read_audio(f) for f in files], a.seconds)
    wait_until_ready(a.server, a.wait)
    os.makedirs(a.out, exist_ok=True)
    chunk = max(1, int(a.chunk_ms * 16))  # 16 kHz
    rng = random.Random(0)
    stream_many(a.server, [("warmup", wavs[0])], 1, chunk,  # first-call costs out of the numbers
                transport=a.transport)
    rows = []
    for n in [int(x) for x in a.streams.split(",")]:
        per = max(1, round(a.duration / a.seconds))  # streams per microphone
        items = [(f"s{i}", wavs[i % len(wavs)]) for i in range(n * per)]
        delays = [rng.uniform(0, a.seconds) if i < n else 0.0 for i in range(n * per)]
        before = model_stats(a.server)
        t0 = time.perf_counter()
        replies = _stream_in_procs(a, items, n, chunk, delays)
        wall = time.perf_counter() - t0
        after = model_stats(a.server)
        req, batches, ns = (y - x for x, y in zip(before, after))
        ok = [r for r in replies if r.error is None]
        errs = {r.error for r in replies if r.error}
        if errs:
            print("errors:", list(errs)[:2], flush=True)
        row = {"streams": n, "seconds": a.seconds, "chunk_ms": a.chunk_ms, "sent": len(items),
               "failed": len(items) - len(ok),
               "empty_finals": sum(not (r.text or "").strip() for r in ok),
               "behind": sum(r.behind for r in ok),
               "max_lag_ms": max((r.max_lag for r in ok), default=0.0) * 1e3,
               **latency_summary(replies), "chunk_requests": req, "batches": batches,
               "streams_per_batch": req / batches if batches else 0.0,
               "compute_ms_per_batch": ns / batches / 1e6 if batches else 0.0,
               "chunk_requests_per_s": req / wall, "wall_s": wall}
        rows.append(row)
        print(f"streams {n:<4} chunk p50 {row['chunk_p50_ms']:7.1f} p99 {row['chunk_p99_ms']:7.1f} ms  "
              f"first-partial p50 {row['first_partial_p50_ms']:6.0f}  final p50 {row['final_p50_ms']:6.0f} "
              f"p99 {row['final_p99_ms']:6.0f} ms  behind {row['behind']}/{len(items)}  failed {row['failed']}  "
              f"{row['streams_per_batch']:.1f} streams/batch, {row['compute_ms_per_batch']:.1f} ms/batch",
              flush=True)
        if row["behind"] and not a.keep_going:
            print(f"stopping: {row['behind']} of {len(items)} streams fell behind real time", flush=True)
            break
        if wall > a.max_seconds:
            print(f"stopping: the round took {wall:.0f} s > --max-seconds", flush=True)
            break
    write_csv(rows, os.path.join(a.out, "stream_sweep.csv"))
    plot(rows, os.path.join(a.out, "stream_sweep.png"))
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["streams"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, style in (("chunk_p50_ms", "-o"), ("chunk_p99_ms", "--s"), ("final_p50_ms", "-^"),
                       ("final_p99_ms", "--v")):
        ax[0].plot(n, [r[key] for r in rows], style, label=key.replace("_ms", ""))
    ax[0].axhline(rows[0]["chunk_ms"], color="grey", lw=0.8, ls=":", label="one chunk of audio")
    ax[0].set_xlabel("concurrent real-time streams")
    ax[0].set_ylabel("latency (ms)")
    ax[0].set_yscale("log")
    ax[0].set_title(f"{rows[0]['chunk_ms']:g} ms chunks, {rows[0]['seconds']:g} s streams")
    ax[1].plot(n, [r["behind"] / r["sent"] for r in rows], "-o", color="C3", label="fell behind (fraction)")
    ax[1].set_xlabel("concurrent real-time streams")
    ax[1].set_ylim(-0.05, 1.05)
    ax2 = ax[1].twinx()
    ax2.plot(n, [r["streams_per_batch"] for r in rows], "--s", color="C0", label="streams per batch")
    ax2.set_ylabel("streams per batch")
    ax[1].legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    for x in (ax[0], ax[1]):
        x.grid(True, alpha=0.3)
        if x is ax[0]:
            x.legend(fontsize=8)
        x.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="127.0.0.1:8001")
    p.add_argument("--wav-dir", required=True, help="wavs to stream (tiled/cropped to --seconds)")
    p.add_argument("--max-wavs", type=int, default=50)
    p.add_argument("--streams", default="1,4,8,16,32", help="comma-separated concurrent streams")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per stream")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds each microphone keeps streaming per N (streams back to back)")
    p.add_argument("--chunk-ms", type=float, default=640.0)
    p.add_argument("--keep-going", action="store_true", help="go on after streams fell behind")
    p.add_argument("--max-seconds", type=float, default=120, help="stop once a round took longer")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                   help="stream (default): one ModelStreamInfer call per stream; unary: a gRPC "
                        "call per chunk")
    p.add_argument("--procs", type=int, default=1,
                   help="client processes sharing the microphones (thousands of streams need several)")
    p.add_argument("--wait", type=float, default=300)
    p.add_argument("--out", default="stream_sweep_out")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
