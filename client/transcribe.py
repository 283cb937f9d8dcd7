#!/usr/bin/env python3
"""Transcribe wav files with a running Triton `attention_rescoring` ensemble over gRPC.

    python client/transcribe.py --server localhost:8001 [--concurrency 8] [--ref text] WAV...

Prints `<name>\\t<text>` per file (input order), then a summary on stderr. Audio that is
not 16 kHz is resampled here; unreadable files are reported and skipped.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wenet_triton.cer import cer_summary  # noqa: E402
from wenet_triton.cli import expand_inputs, utt_id  # noqa: E402
from wenet_triton.client import transcribe_many, wait_until_ready  # noqa: E402
from wenet_triton.frontend import AudioError, read_audio  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wavs", nargs="+", help="wav/flac files, directories or globs")
    p.add_argument("--server", default="localhost:8001", help="Triton gRPC host:port")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--ref", help="Kaldi `text` file: report CER against it")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate the server expects")
    p.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for the server")
    p.add_argument("--timeout", type=float, default=120, help="per-request timeout (s)")
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
    if a.wait:
        wait_until_ready(a.server, a.wait)

    from tqdm import tqdm
    bar = tqdm(total=len(items), unit="wav", file=sys.stderr,
               disable=len(items) < 50 and not sys.stderr.isatty())
    import time
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
