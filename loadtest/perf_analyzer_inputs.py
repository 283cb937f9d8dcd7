#!/usr/bin/env python3
"""Write perf_analyzer --input-data JSON files with real audio: one file per utterance
length (wavs tiled/cropped to N seconds), WAV + WAV_LENS per request.

    python3 -m loadtest.perf_analyzer_inputs --wav-dir wavs/ --seconds 2,5,10,20 --out pa/
    perf_analyzer -m attention_rescoring -i grpc -u 127.0.0.1:8001 --input-data pa/wav_5s.json \
        --shape WAV:80000 --concurrency-range 1:64:2 -f pa/perf_5s.csv

With --streaming, inputs of the sequence-batched `streaming` model instead: one data stream
per wav (perf_analyzer plays each stream back on one correlation id, START on its first
step, END on its last), each step a chunk of --chunk-ms (wavs tiled/cropped to a whole
number of chunks, so every step has the same shape):

    python3 -m loadtest.perf_analyzer_inputs --streaming --wav-dir wavs/ --seconds 8 \
        --chunk-ms 640 --out pa/
    perf_analyzer -m streaming -i grpc -u 127.0.0.1:8001 --input-data pa/stream_8s_640ms.json \
        --shape WAV:10240 --sequence-length 12 --concurrency-range 8:64:8 -f pa/perf_streams.csv

There the concurrency is the number of concurrent streams (sequences), each sending its next
chunk as soon as the previous answer came (not at real-time pace: use
loadtest/stream_sweep.py for that), and the latency is per chunk request.

perf_analyzer 2.60 keeps about every request it sends until its measurement ends (on an H200
host at 10 s and concurrency 256: ~100 GB in a minute; session 23), so a measurement by time
windows that does not settle soon fills the host. `count` gives a fixed number of requests
whose keeping fits a memory budget (default a quarter of MemAvailable, at most 32 GB), for
perf_analyzer's --request-count (one measurement over exactly that many requests). What it
keeps was measured at ~1.6-1.8x the inputs' bytes (H200 host, session 24: 47-55 GB of
private memory for 26-31 GB of requests at 2 / 5 / 10 s), so the count allows 1.8x:

    python3 -m loadtest.perf_analyzer_inputs count --seconds 10 --concurrency 256   # 29826 (32 GB)
"""
import argparse
import glob
import json
import os
import sys

from loadtest.sweep import fixed_length
from wenet_triton.audio.frontend import read_audio

RATE = 16000
KEPT_PER_INPUT_BYTE = 1.8  # perf_analyzer 2.60's memory per byte of the requests it sent (measured)


def _step(w):
    return {"WAV": {"content": w.round(6).tolist(), "shape": [len(w)]},
            "WAV_LENS": {"content": [len(w)], "shape": [1]}}


def streaming_inputs(base, seconds: float, chunk_ms: float):
    """data: one stream (list of chunk steps) per wav; -> (data, chunk samples, steps)."""
    chunk = int(chunk_ms * RATE / 1000)
    steps = max(1, round(seconds * RATE / chunk))
    data = [[_step(w[k * chunk:(k + 1) * chunk]) for k in range(steps)]
            for w in fixed_length(base, steps * chunk / RATE)]
    return data, chunk, steps


def request_count(seconds: float, concurrency: int, budget_mb: float, most: int = 200_000,
                  bytes_per_sample: int = 4) -> int:
    """Requests of `seconds` of float32 audio that perf_analyzer can keep within budget_mb
    (KEPT_PER_INPUT_BYTE per byte sent), at most `most`, at least 4 x concurrency
    (perf_analyzer needs at least the concurrency; fewer than a few rounds per client
    measure nothing)."""
    per_request = max(1.0, seconds * RATE * bytes_per_sample * KEPT_PER_INPUT_BYTE)
    n = int(budget_mb * (1 << 20) // per_request)
    return max(4 * concurrency, min(most, n))


def default_budget_mb(meminfo: str = "/proc/meminfo") -> float:
    """A quarter of the host's MemAvailable, at most 32 GB (16 GB where it cannot be read)."""
    try:
        with open(meminfo) as f:
            avail = next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 16384.0
    return min(32768.0, avail / 4)


def count_main(argv) -> int:
    p = argparse.ArgumentParser(prog="perf_analyzer_inputs count",
                                description="perf_analyzer --request-count within a memory budget")
    p.add_argument("--seconds", type=float, required=True, help="audio per request")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--budget-mb", type=float, default=0, help="0: a quarter of MemAvailable, at most 32 GB")
    p.add_argument("--most", type=int, default=200_000)
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.concurrency < 1:
        p.error("--seconds must be > 0 and --concurrency >= 1")
    print(request_count(a.seconds, a.concurrency, a.budget_mb or default_budget_mb(), a.most))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["count"]:
        return count_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wav-dir", required=True)
    p.add_argument("--seconds", default="2,5,10,20")
    p.add_argument("--count", type=int, default=8, help="distinct utterances (streams) per file")
    p.add_argument("--streaming", action="store_true",
                   help="inputs of the `streaming` model: one chunked stream per wav")
    p.add_argument("--chunk-ms", type=float, default=640.0, help="with --streaming: audio per chunk")
    p.add_argument("--out", default="pa_inputs")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    base = [read_audio(f) for f in sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[: a.count]]
    for sec in [float(s) for s in a.seconds.split(",")]:
        if a.streaming:
            data, chunk, steps = streaming_inputs(base, sec, a.chunk_ms)
            path = os.path.join(a.out, f"stream_{sec:g}s_{a.chunk_ms:g}ms.json")
            with open(path, "w") as f:
                json.dump({"data": data}, f)
            print(f"{path}: {len(data)} streams of {steps} chunks of {chunk} samples (use -m streaming "
                  f"--shape WAV:{chunk} --sequence-length {steps}; concurrency = streams)")
            continue
        data = [_step(w) for w in fixed_length(base, sec)]
        path = os.path.join(a.out, f"wav_{sec:g}s.json")
        with open(path, "w") as f:
            json.dump({"data": data}, f)
        print(f"{path}: {len(data)} requests of {sec:g} s (use --shape WAV:{int(sec * 16000)})")


if __name__ == "__main__":
    raise SystemExit(main())
