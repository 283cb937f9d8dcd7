#!/usr/bin/env python3
"""CPU of the real `streaming` python-backend stub per request, with the model's work taken
out: a real tritonserver (the pytriton wheel's, on loopback) serves a rendered repository;
N sequences each send START, `--chunks` empty chunks and END (an empty chunk is a valid
request that adds no audio: no fbank, no encoder window, a zero-frame search, no rescoring
at END), so what the stub spends per request is Triton's python-backend machinery (request
and response objects over shared memory) plus the model's execute() overhead. Reads the
stub's and tritonserver's utime + stime from /proc before and after.

    PYTHONPATH=. .venv/bin/python -m benchmarks.stream_served_overhead --repo REPO --streams 32

The stub imports the wenet_triton of the directory tritonserver starts in (the one this
process imports), so `PYTHONPATH=OTHER_CHECKOUT` measures another version's model code.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient

from wenet_triton.serving import procs
from wenet_triton.serving.server import TritonServer, free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def one_stream(url: str, cid: int, chunks: int, samples: int) -> int:
    client = grpcclient.InferenceServerClient(url)
    wav = np.zeros((1, samples), np.float32)
    errors = 0
    for k in range(chunks):
        a = grpcclient.InferInput("WAV", list(wav.shape), "FP32")
        a.set_data_from_numpy(wav)
        b = grpcclient.InferInput("WAV_LENS", [1, 1], "INT32")
        b.set_data_from_numpy(np.array([[samples]], np.int32))
        try:
            r = client.infer("streaming", [a, b], sequence_id=cid, sequence_start=k == 0,
                             sequence_end=k == chunks - 1)
            r.as_numpy("TRANSCRIPT")
        except Exception:  # noqa: BLE001 - counted
            errors += 1
    client.close()
    return errors


def load(url: str, streams: int, chunks: int, samples: int, first_id: int) -> int:
    with ThreadPoolExecutor(streams) as pool:
        return sum(pool.map(lambda i: one_stream(url, first_id + i, chunks, samples), range(streams)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--streams", type=int, default=32, help="concurrent sequences (<= max_streams)")
    ap.add_argument("--chunks", type=int, default=200, help="requests per sequence")
    ap.add_argument("--samples", type=int, default=0, help="samples per chunk (0: empty chunks)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="stream_served_")
    server = TritonServer(a.repo, http_port=None, grpc_port=free_port(), metrics_port=free_port(),
                          log_file=os.path.join(tmp, "triton.log"))
    with server:
        stub = [s for s in procs.stubs(server.proc.pid) if s.instance.startswith("streaming")][0]
        url = server.grpc_url
        load(url, 4, 20, a.samples, 1)  # warm up
        for r in range(a.rounds):
            s0, t0, w0 = cpu_seconds(stub.pid), cpu_seconds(server.proc.pid), time.perf_counter()
            errors = load(url, a.streams, a.chunks, a.samples, 1000 + r * a.streams)
            wall = time.perf_counter() - w0
            n = a.streams * a.chunks
            print(f"requests {n}, errors {errors}, wall {wall:.2f} s ({n / wall:.0f}/s), stub CPU "
                  f"{1000 * (cpu_seconds(stub.pid) - s0) / n:.3f} ms per request, tritonserver CPU "
                  f"{1000 * (cpu_seconds(server.proc.pid) - t0) / n:.3f} ms per request", flush=True)


if __name__ == "__main__":
    main()
