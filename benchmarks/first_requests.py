"""The first requests a freshly started server answers: what a new replica's first users wait
while it captures CUDA graphs, loads kernel modules or compiles kernels on first use.

    python3 -m benchmarks.first_requests --url 127.0.0.1:8001 --out first.csv --label warm   # right after start
    python3 -m benchmarks.first_requests plot --out first.png first.csv [more.csv ...]

Waves of concurrent requests, one wave after the other, each wave at a (batch, length) shape
the server has not seen yet (default 64 x 10 s, 32 x 7 s, 16 x 3 s, 64 x 15 s, 8 x 12 s:
`--waves`); the audio is the wavs of --wav-dir (the package's samples by default) repeated or cut
to each wave's length. Per wave: its wall time, the latency p50 and max, failures (no retries:
a failure counts). Rows are appended to --out (CSV), so the runs of several servers (e.g. with
and without `warm_graphs_seconds`) land in one file; `plot` draws each label's slowest request
per wave. `scripts/gpu/serve.sh start first` runs it against a server it just started."""
import argparse
import csv
import os
import sys
import time
from typing import Dict, List

import numpy as np

from loadtest.sweep import fixed_length
from wenet_triton.audio.frontend import read_audio
from wenet_triton.paths import SAMPLES_DIR
from wenet_triton.serving.client import RetryPolicy, transcribe_many

FIELDS = ["label", "wave", "requests", "seconds", "wall_s", "p50_ms", "max_ms", "failed", "first_error"]
RATE = 16000


def parse_waves(text: str) -> List[tuple]:
    """'64x10,32x7' -> [(64, 10.0), (32, 7.0)] (requests x seconds of audio each)."""
    out = []
    for part in text.split(","):
        try:
            n, sec = part.lower().split("x")
            n, sec = int(n), float(sec)
        except ValueError:
            raise ValueError(f"wave {part!r}: write REQUESTSxSECONDS, e.g. 64x10") from None
        if n < 1 or sec <= 0:
            raise ValueError(f"wave {part!r}: needs at least 1 request of more than 0 s")
        out.append((n, sec))
    return out


def base_audio(wav_dir: str) -> np.ndarray:
    names = sorted(f for f in os.listdir(wav_dir) if f.endswith(".wav"))
    if not names:
        raise ValueError(f"no .wav files in {wav_dir}")
    return np.concatenate([read_audio(os.path.join(wav_dir, f)) for f in names])


def run_wave(url: str, audio: np.ndarray, n: int, seconds: float, timeout: float) -> Dict:
    wav = fixed_length([audio], seconds, RATE)[0]
    t = time.perf_counter()
    replies = transcribe_many(url, [(f"w{i}", wav) for i in range(n)], concurrency=n, timeout=timeout,
                              retry=RetryPolicy(retries=0))
    wall = time.perf_counter() - t
    ok = [r.seconds for r in replies if r.error is None]
    bad = [r.error for r in replies if r.error is not None]
    return {"requests": n, "seconds": seconds, "wall_s": round(wall, 3),
            "p50_ms": round(1e3 * float(np.median(ok)), 1) if ok else "",
            "max_ms": round(1e3 * max(ok), 1) if ok else "", "failed": len(bad),
            "first_error": (bad[0] or "")[:200] if bad else ""}


def measure(url: str, waves: List[tuple], wav_dir: str, label: str, out: str, timeout: float) -> List[Dict]:
    audio = base_audio(wav_dir)
    rows = []
    for k, (n, sec) in enumerate(waves):
        row = {"label": label, "wave": k + 1, **run_wave(url, audio, n, sec, timeout)}
        rows.append(row)
        print(f"{label} wave {k + 1}: {n} x {sec:g} s in {row['wall_s']} s, p50 {row['p50_ms']} ms, "
              f"max {row['max_ms']} ms, failed {row['failed']}", flush=True)
    new = not os.path.exists(out) or os.path.getsize(out) == 0
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    return rows


def plot(out: str, csvs: List[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.proc_cpu import save_figure

    rows = [r for path in csvs for r in csv.DictReader(open(path))]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    waves = sorted({(int(r["wave"]), f"{r['requests']}x{float(r['seconds']):g}s") for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        by_wave = {int(r["wave"]): r for r in rows if r["label"] == label}
        xs = [k + i * width for k, (w, _) in enumerate(waves) if by_wave.get(w, {}).get("max_ms")]
        ys = [float(by_wave[w]["max_ms"]) for w, _ in waves if by_wave.get(w, {}).get("max_ms")]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(waves))], [name for _, name in waves])
    ax.set_xlabel("wave after the start (requests x seconds of audio)")
    ax.set_ylabel("slowest request of the wave (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        p = argparse.ArgumentParser(prog="first_requests plot", description="each label's slowest request per wave")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("csv", nargs="+")
        a = p.parse_args(argv[1:])
        return plot(a.out, a.csv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server's gRPC endpoint, HOST:PORT")
    p.add_argument("--out", required=True, help="CSV the rows are appended to")
    p.add_argument("--waves", default="64x10,32x7,16x3,64x15,8x12", help="REQUESTSxSECONDS, comma-separated")
    p.add_argument("--wav-dir", default=SAMPLES_DIR, help="wavs the audio is made of (default: the package's samples)")
    p.add_argument("--label", default="server", help="names this server's rows (e.g. warm, cold)")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    a = p.parse_args(argv)
    try:
        waves = parse_waves(a.waves)
        rows = measure(a.url, waves, a.wav_dir, a.label, a.out, a.timeout)
    except ValueError as e:
        p.error(str(e))
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
