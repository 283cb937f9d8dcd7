#!/usr/bin/env python3
"""Transcribe wav files with a running Triton `attention_rescoring` ensemble over gRPC.

    python client/transcribe.py --server localhost:8001 [--concurrency 8] [--ref text] WAV...

Prints `<name>\\t<text>` per file (input order), then a summary on stderr. Audio that is
not 16 kHz is resampled here; unreadable files are reported and skipped.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wenet_triton.cer import cer_summary  # noqa: E402
from wenet_triton.cli import expand_inputs, utt_id  # noqa: E402
from wenet_triton.client import transcribe_many, wait_until_ready  # noqa: E402
from wenet_triton.frontend import AudioError, read_audio  # noqa: E402


def check_same_server(server, health, wait, pid=None):
    """Wait (up to `wait` s) for the supervisor's health to say ready, then make sure the
    gRPC server at `server` is the one it supervises: another Triton on that port must not
    answer for it."""
    import tritonclient.grpc as grpcclient

    deadline, info = time.time() + wait, None
    while True:
        try:
            with urllib.request.urlopen(health, timeout=5) as r:
                info = json.load(r)
                break
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if pid and not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"the server (pid {pid}) exited before it was ready")
        if time.time() > deadline:
            sys.exit(f"{health} did not report ready within {wait:.0f} s")
        time.sleep(1)
    got = grpcclient.InferenceServerClient(server).get_server_metadata().name
    if got != info.get("server_id"):
        sys.exit(f"the gRPC server at {server} (id '{got}') is not the one {health} supervises "
                 f"(id '{info.get('server_id')}'): another server holds that port")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wavs", nargs="+", help="wav/flac files, directories or globs")
    p.add_argument("--server", default="localhost:8001", help="Triton gRPC host:port")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--ref", help="Kaldi `text` file: report CER against it")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate the server expects")
    p.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for the server")
    p.add_argument("--timeout", type=float, default=120, help="per-request timeout (s)")
    p.add_argument("--health", help="the `wenet-triton serve` health URL (http://HOST:PORT/healthz): "
                   "wait for it, and check that --server is that very server (its id)")
    p.add_argument("--wait-pid", type=int, help="give up waiting when this process (the server) exits")
    a = p.parse_args(argv)

    items, bad = [], 0
    for path in expand_inputs(a.wavs):
        try:
            items.append((utt_id(path), read_audio(path, a.sample_rate)))
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
    if not items:
        sys.exit("no readable audio")
    if a.health:
        check_same_server(a.server, a.health, a.wait, a.wait_pid)
    elif a.wait:
        wait_until_ready(a.server, a.wait)

    from tqdm import tqdm
    bar = tqdm(total=len(items), unit="wav", file=sys.stderr,
               disable=len(items) < 50 and not sys.stderr.isatty())
    t0 = time.perf_counter()
    replies = transcribe_many(a.server, items, a.concurrency, a.sample_rate,
                              on_reply=lambda r: bar.update(1), timeout=a.timeout)
    wall = time.perf_counter() - t0
    bar.close()
    hyps = {}
    for r in replies:
        if r.error is not None:
            print(f"error: {r.name}: {r.error}", file=sys.stderr)
            bad += 1
        else:
            hyps[r.name] = r.text
            print(f"{r.name}\t{r.text}")
    audio = sum(r.audio_seconds for r in replies)
    lat = sorted(r.seconds for r in replies)
    print(f"# {len(hyps)} ok, {bad} failed, {audio:.1f} s audio, {wall:.2f} s wall, "
          f"RTF {wall / max(audio, 1e-9):.4f}, latency p50 {lat[len(lat) // 2] * 1000:.0f} ms "
          f"max {lat[-1] * 1000:.0f} ms (concurrency {a.concurrency})", file=sys.stderr)
    if a.ref:
        print(cer_summary(a.ref, hyps), file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
