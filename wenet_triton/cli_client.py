"""The gRPC side of `wenet-triton transcribe --server HOST:PORT`: send wav files to a running
Triton `attention_rescoring` ensemble, print `<utt>\\t<text>` per file in input order and a
summary on stderr. Audio that is not 16 kHz is resampled here. `--server` may name several
endpoints (comma-separated: round robin, a retry goes to the next one) or a `dns:///NAME:PORT`
with client-side round robin; UNAVAILABLE is retried with backoff within `--timeout`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import tritonclient.grpc as grpcclient
from tqdm import tqdm

from wenet_triton.audio.frontend import AudioError, expand_inputs, read_audio, utt_id
from wenet_triton.decode.cer import cer_summary
from wenet_triton.serving.client import TRANSPORTS, RetryPolicy, endpoints, transcribe_many, wait_until_ready


def add_server_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("server (instead of decoding here)")
    g.add_argument("--server", help="Triton gRPC HOST:PORT: send the audio there (no --model needed); "
                   "several as A:PORT,B:PORT (round robin, retries go to the next), or "
                   "dns:///NAME:PORT (client-side round robin over the name's addresses)")
    g.add_argument("--concurrency", type=int, default=8, help="with --server: requests in flight")
    g.add_argument("--wait", type=float, default=0,
                   help="with --server: wait up to this many seconds for the server to be ready")
    g.add_argument("--timeout", type=float, default=120,
                   help="with --server: deadline of each request, its retries included (s)")
    g.add_argument("--retries", type=int, default=50,
                   help="with --server: at most this many retries of a request answered UNAVAILABLE "
                   "(refused, reset, restarting or draining server) within --timeout; 0: none")
    g.add_argument("--transport", choices=TRANSPORTS, default="unary",
                   help="with --server: unary (default): one gRPC call per wav, spread over the "
                   "endpoints and a balancer's replicas call by call; stream: the wavs as messages "
                   "on one ModelStreamInfer call per connection and endpoint (about a third less "
                   "CPU in `serve`'s checking front per request; a wav whose stream breaks is sent "
                   "again as a unary call)")
    g.add_argument("--sample-rate", type=int, default=16000, help="with --server: the rate it expects")
    g.add_argument("--health", help="with --server: the `wenet-triton serve` health URL "
                   "(http://HOST:PORT/healthz): wait for it, and check that --server is that very "
                   "server (its id), not another one on the same port")
    g.add_argument("--wait-pid", type=int, help="with --server: give up waiting when this process "
                   "(the server) exits")


def check_same_server(server: str, health: str, wait: float, pid=None) -> None:
    """Wait (up to `wait` s) for the supervisor's health to say ready, then make sure the
    gRPC server at `server` is the one it supervises: another Triton on that port must not
    answer for it."""
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


def summary(ok: int, failed: int, audio_s: float, wall: float, extra: str = "") -> str:
    """One stderr line; RTF = wall time / audio time, only when some audio was transcribed."""
    rtf = f", RTF {wall / audio_s:.4f}" if ok and audio_s > 0 else ""
    return f"# {ok} ok, {failed} failed, {audio_s:.1f} s audio, {wall:.2f} s wall{rtf}{extra}"


def read_inputs(wavs, rate: int, command: str):
    """(utt id, waveform) of every readable file of `wavs` (files, dirs, globs), each bad one
    named on stderr; -> (items, how many failed). Exits when none is readable."""
    items, bad = [], 0
    for path in expand_inputs(wavs):
        try:
            items.append((utt_id(path), read_audio(path, rate)))
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
    if not items:
        sys.exit(f"{command}: no readable audio")
    return items, bad


def transcribe_remote(a) -> None:
    items, bad = read_inputs(a.wavs, a.sample_rate, "transcribe")
    if a.health:
        if len(endpoints(a.server)) != 1:
            sys.exit("--health checks one server: give one --server endpoint with it")
        check_same_server(a.server, a.health, a.wait, a.wait_pid)
    elif a.wait:
        wait_until_ready(a.server, a.wait)
    bar = tqdm(total=len(items), unit="wav", file=sys.stderr,
               disable=len(items) < 50 and not sys.stderr.isatty())
    t0 = time.perf_counter()
    replies = transcribe_many(a.server, items, a.concurrency, a.sample_rate,
                              on_reply=lambda r: bar.update(1), timeout=a.timeout,
                              retry=RetryPolicy(retries=a.retries), transport=a.transport)
    wall = time.perf_counter() - t0
    bar.close()
    hyps = {}
    for r in replies:
        if r.error is not None:
            print(f"error: {r.name}: {r.error}", file=sys.stderr)
            bad += 1
        else:
            hyps[r.name] = r.text
            print(f"{r.name}\t{r.text}", flush=True)
    ok = [r for r in replies if r.error is None]
    lat = sorted(r.seconds for r in ok)
    extra = (f", latency p50 {lat[len(lat) // 2] * 1000:.0f} ms max {lat[-1] * 1000:.0f} ms"
             if lat else "") + f" (concurrency {a.concurrency})"
    retried = sum(r.attempts > 1 for r in replies)
    if retried:
        extra += f", {retried} retried"
    print(summary(len(ok), bad, sum(r.audio_seconds for r in ok), wall, extra), file=sys.stderr)
    if a.ref:
        print(cer_summary(a.ref, hyps), file=sys.stderr)
    if bad:
        sys.exit(1)
