"""Lab probe (session 24): the first requests a freshly started server answers. Waves of
`concurrency` requests at once, each wave at a new (batch, length) shape (the encoder and
decoder graphs of each shape are captured on first use unless the server warmed them at
load); per wave: wall seconds, latency p50 / max, failures. Writes a CSV.

    python3 first_requests.py --url 127.0.0.1:8001 --out first.csv --label warm
"""
import argparse
import csv
import os
import threading
import time
import wave

import numpy as np
import tritonclient.grpc as grpcclient


def samples(wav_dir: str) -> np.ndarray:
    parts = []
    for name in sorted(os.listdir(wav_dir)):
        if name.endswith(".wav"):
            with wave.open(os.path.join(wav_dir, name)) as w:
                parts.append(np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768)
    return np.concatenate(parts)


def wave_of(client, audio: np.ndarray, n: int, timeout_s: float):
    lats, fails, done = [], [], threading.Semaphore(0)

    def one(i):
        t = time.perf_counter()

        def cb(result, error):
            (fails if error else lats).append(time.perf_counter() - t)
            done.release()
        inp = [grpcclient.InferInput("WAV", [1, audio.size], "FP32"),
               grpcclient.InferInput("WAV_LENS", [1, 1], "INT32")]
        inp[0].set_data_from_numpy(audio[None])
        inp[1].set_data_from_numpy(np.array([[audio.size]], np.int32))
        client.async_infer("attention_rescoring", inp, cb, client_timeout=timeout_s)

    t0 = time.perf_counter()
    for i in range(n):
        one(i)
    for _ in range(n):
        done.acquire(timeout=timeout_s + 5)
    return time.perf_counter() - t0, lats, fails


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--wav-dir", default="wenet_triton/samples")
    ap.add_argument("--waves", default="64x10,32x7,16x3,64x15,8x12", help="requests x seconds per wave")
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    audio = samples(a.wav_dir)
    client = grpcclient.InferenceServerClient(a.url)
    rows = []
    for spec in a.waves.split(","):
        n, sec = spec.split("x")
        x = np.resize(audio, int(float(sec) * 16000))
        wall, lats, fails = wave_of(client, x, int(n), 60.0)
        row = {"label": a.label, "requests": int(n), "seconds": float(sec), "wall_s": round(wall, 3),
               "p50_ms": round(1e3 * float(np.median(lats)), 1) if lats else "",
               "max_ms": round(1e3 * max(lats), 1) if lats else "", "failed": len(fails)}
        rows.append(row)
        print(row, flush=True)
    new = not os.path.exists(a.out)
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
