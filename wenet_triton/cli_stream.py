"""`wenet-triton stream --server HOST:PORT WAVS...`: recognize wav files as live streams with
the server's `streaming` model. Each wav is sent in chunks (`--chunk-ms`, optionally at
real-time pace) as its own sequence; the final `<utt>\\t<text>` of each goes to stdout in
input order, partials to stderr (one updating line on a terminal; a line each with
--verbose otherwise), and a summary with chunk, first-partial and final latencies (p50/p99)
to stderr. Latency definitions: docs/streaming.md ("Serving streams")."""
from __future__ import annotations

import argparse
import shutil
import sys
import time

from wenet_triton.cli_client import read_inputs
from wenet_triton.serving.stream_client import TRANSPORTS, latency_summary, stream_many, wait_until_ready


def add_command(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("stream", help="recognize wav files as live streams with a server's "
                       "`streaming` model; prints <utt>\\t<final text>")
    s.add_argument("wavs", nargs="+", help="wav/flac files, directories or globs")
    s.add_argument("--server", required=True, help="Triton gRPC HOST:PORT")
    s.add_argument("--chunk-ms", type=float, default=640.0,
                   help="audio per chunk request, in ms (default 640)")
    s.add_argument("--realtime", action="store_true",
                   help="send each chunk only once its audio would have been recorded")
    s.add_argument("--concurrency", type=int, default=8, help="streams at a time")
    s.add_argument("--sample-rate", type=int, default=16000, help="the rate the server expects")
    s.add_argument("--timeout", type=float, default=60.0, help="per-chunk request timeout (s)")
    s.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                   help="stream (default): one bidirectional ModelStreamInfer call per wav, its "
                        "chunks as messages (less CPU per chunk in the client and the server's "
                        "checking front); unary: one gRPC call per chunk")
    s.add_argument("--wait", type=float, default=0,
                   help="wait up to this many seconds for the streaming model to be ready")
    s.add_argument("--verbose-partials", "--partials", dest="partials", action="store_true",
                   help="print every partial on stderr, a line each (when stderr is not a terminal)")
    s.set_defaults(func=cmd_stream)
    return s


class _Partials:
    """Partials on stderr: one updating line on a terminal, a line each when asked, else none."""
    def __init__(self, lines: bool):
        self.tty = sys.stderr.isatty()
        self.lines = lines and not self.tty
        self.width = shutil.get_terminal_size((100, 20)).columns - 1

    def __call__(self, name: str, text: str, final: bool):
        if self.tty:
            line = f"{name}{' (final)' if final else ''}: {text}"
            sys.stderr.write("\r\033[K" + line[-self.width:])
            sys.stderr.flush()
        elif self.lines:
            print(f"{'final' if final else 'partial'} {name}: {text}", file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def cmd_stream(a) -> None:
    items, bad = read_inputs(a.wavs, a.sample_rate, "stream")
    if a.chunk_ms <= 0:
        sys.exit("stream: --chunk-ms must be > 0")
    if a.wait:
        wait_until_ready(a.server, a.wait)
    partials = _Partials(a.partials)
    printed = [0]
    replies = [None] * len(items)
    index = {name: i for i, (name, _) in enumerate(items)}

    def on_reply(r):  # print finals in input order as soon as the earlier ones are done
        replies[index[r.name]] = r
        while printed[0] < len(replies) and replies[printed[0]] is not None:
            done = replies[printed[0]]
            if done.error is None:
                partials.close()
                print(f"{done.name}\t{done.text}", flush=True)
            printed[0] += 1

    t0 = time.perf_counter()
    got = stream_many(a.server, items, a.concurrency, max(1, int(a.chunk_ms * a.sample_rate / 1000)),
                      a.realtime, a.sample_rate, on_partial=partials, on_reply=on_reply,
                      timeout=a.timeout, transport=a.transport)
    wall = time.perf_counter() - t0
    partials.close()
    for r in got:
        if r.error is not None:
            print(f"error: {r.name}: {r.error}", file=sys.stderr)
            bad += 1
    print(stream_summary(got, wall, a.concurrency, a.chunk_ms, a.realtime, bad), file=sys.stderr)
    if bad:
        sys.exit(1)


def stream_summary(replies, wall: float, concurrency: int, chunk_ms: float, realtime: bool,
                   failed: int) -> str:
    ok = [r for r in replies if r.error is None]
    audio = sum(r.audio_seconds for r in ok)
    lat = latency_summary(replies)
    parts = [f"# {len(ok)} streams, {failed} failed, {audio:.1f} s audio, {wall:.2f} s wall"
             + (f" ({audio / wall:.1f} audio-s/s)" if ok and wall > 0 else "")
             + f", {chunk_ms:g} ms chunks, concurrency {concurrency}"
             + (", real-time pace" if realtime else "")]
    for key, label in (("chunk", "chunk latency"), ("first_partial", "first-partial latency"),
                       ("final", "final latency")):
        parts.append(f"# {label}: p50 {lat[key + '_p50_ms']:.0f} ms, p99 {lat[key + '_p99_ms']:.0f} ms")
    if realtime:
        behind = sum(r.behind for r in ok)
        parts.append(f"# {behind} of {len(ok)} streams fell behind real time (max lag "
                     f"{max((r.max_lag for r in ok), default=0) * 1e3:.0f} ms)")
    return "\n".join(parts)
