#!/usr/bin/env python3
"""CPU cost of the Triton `streaming` model's `execute()` per served chunk, without a server.

The served model (wenet_triton/serving/stream_model.py) runs in Triton's python-backend stub;
here it runs in process on a stand-in for `triton_python_backend_utils` (this file's
`fake_pb_utils()`: request objects whose `inputs()` returns a fresh list of named tensors as the
stub's bindings do, `Tensor` objects that serialize BYTES outputs as the stub does, and a
fake `decoder` model for the BLS rescoring call that picks the first hypothesis). N streams
at staggered offsets send 640 ms chunks (START on the first, END on the last); every round
of chunks is cut into dynamic batches of `--batch` requests, each handed to
`Streaming.execute()`, which runs the real demo model (default: the onnxruntime chunk
encoder on one thread and kaldi-native-fbank, as on CPU hosts; `--engine torch_cuda --fbank
torch`: the H200's code path, the GPU engine's chunk encoder in eager fp32 on the CPU with
its slot pools and the batched torch fbank; the C++ prefix search with the LM either way).

Per batch the process CPU time (`time.process_time`) of execute() is split into
- model: `StreamDecoder.advance` + `StreamDecoder.finish` (fbank, chunk encoder, search,
  rescoring call): what `benchmarks/stream_steps.py` measures in process;
- open: `StreamDecoder.open` at START (a new stream's front end and encoder state);
- overhead: everything else execute() does (reading inputs and sequence controls, checks,
  per-stream bookkeeping, the idle sweep, building responses), but for
- gc: the garbage collector's passes that fell outside the model work,
reported as ms per chunk (request). `--profile` also runs one cProfile pass with the
profiler off inside the model work, so the listing is the overhead alone. A digest of every
response (text, IS_FINAL, LIVE_STREAMS, errors) is printed: it must not change between
versions of the model code.

    PYTHONPATH=. .venv/bin/python -m benchmarks.stream_execute --streams 256,1024 --batch 256 \
        --out benchmarks/results/stream_execute/after.csv --plot [--baseline before.csv] --profile 256

Caveat: the stand-in's objects are Python, the stub's are C++ bindings (pybind11) over
shared memory, so the absolute overhead here is a lower bound of the served one; what is
saved in the model's own Python carries over.
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import gc
import glob
import hashlib
import io
import json
import os
import pstats
import re
import struct
import tempfile
import time
import types
from collections import defaultdict

import numpy as np
import torch

from wenet_triton.audio.frontend import read_audio
from wenet_triton.paths import SAMPLES_DIR, default_model_dir
from wenet_triton.serving import stream_model, triton_models
from wenet_triton.serving.repo import build_repo


# -- the stand-in for triton_python_backend_utils -------------------------------------------
class _Error:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, msg, code=None):
        self._msg, self.code = msg, code

    def message(self):
        return self._msg


def _serialize_bytes(arr: np.ndarray) -> bytes:
    """Length-prefixed elements, what the stub builds for a BYTES output (it calls the
    utils module's Python serializer for every object-dtype tensor)."""
    parts = []
    for x in arr.reshape(-1):
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


class _Tensor:
    def __init__(self, name, arr):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: a Tensor needs a numpy array")
        self._name, self._arr = name, arr
        self._serialized = _serialize_bytes(arr) if arr.dtype == np.object_ else None

    def name(self):
        return self._name

    def as_numpy(self):
        return self._arr

    @classmethod
    def from_dlpack(cls, name, capsule):
        raise NotImplementedError("numpy >= 2 DLPack outputs: not in this stand-in")


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self._outputs, self._error = list(output_tensors), error

    def output_tensors(self):
        return list(self._outputs)

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


class _Request:
    """A client's chunk (inputs, correlation id) or, built by the model, a BLS request."""
    def __init__(self, inputs=(), correlation_id=0, request_id="", model_name=None,
                 requested_output_names=()):
        self._inputs, self._cid, self._rid = list(inputs), correlation_id, request_id
        self.model_name, self._requested = model_name, list(requested_output_names)

    def inputs(self):  # a new list each call, as the bindings return
        return list(self._inputs)

    def correlation_id(self):
        return self._cid

    def request_id(self):
        return self._rid

    def exec(self):  # the `decoder` model: every hypothesis scores 0, the first one wins
        b, beam = _get(self, "hyps_lens_sos").as_numpy().shape[:2]
        return _Response([_Tensor("best_index", np.zeros((b, 1), np.int64)),
                          _Tensor("score", np.zeros((b, beam), np.float32))])


def _get(obj, name, listing="inputs"):
    for t in getattr(obj, listing)():
        if t.name() == name:
            return t
    return None


def fake_pb_utils() -> types.ModuleType:
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor, m.InferenceRequest, m.InferenceResponse, m.TritonError = _Tensor, _Request, _Response, _Error
    m.get_input_tensor_by_name = lambda req, name: _get(req, name)
    m.get_output_tensor_by_name = lambda resp, name: _get(resp, name, "output_tensors")
    return m


def chunk_request(cid: int, wav: np.ndarray, start: bool, end: bool) -> _Request:
    ts = [("WAV", wav.reshape(1, -1)), ("WAV_LENS", np.array([[len(wav)]], np.int32)),
          ("START", np.array([[int(start)]], np.int32)), ("END", np.array([[int(end)]], np.int32)),
          ("READY", np.array([[1]], np.int32)), ("CORRID", np.array([[cid]], np.uint64))]
    return _Request([_Tensor(n, a) for n, a in ts], correlation_id=cid)


# -- the model under test --------------------------------------------------------------------
def _pbtxt_params(path: str) -> dict:
    text = open(path).read()
    return dict(re.findall(r'parameters \{ key: "([^"]+)" value: \{ string_value: "([^"]*)" \} \}', text))


def open_model(repo: str, streams: int, max_batch: int, threads: int, engine: str, fbank: str):
    params = _pbtxt_params(os.path.join(repo, "streaming", "config.pbtxt"))
    params.update(max_streams=str(streams), idle_seconds="3600", threads=str(threads),
                  search_threads="1", rescore="bls", engine=engine, device="cpu", fbank=fbank,
                  feature_device="cpu")
    if engine == "torch_cuda":
        params["dtype"] = "float32"
        torch.set_num_threads(threads)
    args = {"model_config": json.dumps({"max_batch_size": max_batch,
                                        "parameters": {k: {"string_value": v} for k, v in params.items()}}),
            "model_repository": os.path.join(repo, "streaming"), "model_version": "1",
            "model_instance_kind": "CPU"}
    m = stream_model.Streaming()
    m.initialize(args)
    return m


class ModelClock:
    """process_time of StreamDecoder.advance + finish (`total`) and of StreamDecoder.open
    (`opened`: a new stream's state), with the profiler off meanwhile; and of the garbage
    collector's passes in execute() outside those (`gc`: they come when allocations pile up,
    wherever)."""
    def __init__(self, decoder):
        self.total = self.opened = self.gc = 0.0
        self.profiler, self.inside, self._gc_start = None, False, None
        self.executing = False  # in execute(): only then is a gc pass part of its time
        for name in ("advance", "finish", "open"):
            setattr(decoder, name, self._wrap(getattr(decoder, name), name == "open"))
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase, info):
        if phase == "start":
            self._gc_start = time.process_time()
        elif self._gc_start is not None:
            if self.executing and not self.inside:
                self.gc += time.process_time() - self._gc_start
            self._gc_start = None

    def _wrap(self, fn, opening: bool):
        def timed(*a, **k):
            if self.profiler is not None:
                self.profiler.disable()
            self.inside = True
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                c = time.process_time() - c
                self.inside = False
                if opening:
                    self.opened += c
                else:
                    self.total += c
                if self.profiler is not None:
                    self.profiler.enable()
        return timed


def schedule(n_streams: int, chunks: int, stagger: int):
    """Rounds of (stream, chunk index): stream i starts at round i % stagger, so a round
    mixes STARTs, middles and ENDs at different offsets."""
    rounds = defaultdict(list)
    for i in range(n_streams):
        for k in range(chunks):
            rounds[i % stagger + k].append((i, k))
    return [rounds[r] for r in sorted(rounds)]


def digest_update(h, resp):
    if resp.has_error():
        h.update(b"E" + resp.error().message().encode())
        return
    outs = {t.name(): t.as_numpy() for t in resp.output_tensors()}
    h.update(outs["TRANSCRIPT"].reshape(-1)[0])
    h.update(b"F" if bool(outs["IS_FINAL"].reshape(-1)[0]) else b"P")
    h.update(str(int(outs["LIVE_STREAMS"].reshape(-1)[0])).encode())
    for name, a, dt in (("TRANSCRIPT", outs["TRANSCRIPT"], np.object_), ("IS_FINAL", outs["IS_FINAL"], np.bool_),
                        ("LIVE_STREAMS", outs["LIVE_STREAMS"], np.int32)):
        if a.shape != (1, 1) or a.dtype != dt:
            raise AssertionError(f"{name}: {a.shape} {a.dtype}")


def run(model, audio, n_streams: int, chunks: int, chunk: int, batch: int, stagger: int,
        bad_every: int = 0, profiler=None):
    clock = model.decoder_clock
    clock.total = clock.opened = clock.gc = 0.0
    clock.profiler = profiler
    plan = schedule(n_streams, chunks, stagger)
    h = hashlib.sha256()
    cids = [1000 + i for i in range(n_streams)]
    total = 0.0
    served = errors = batches = 0
    t0 = time.perf_counter()
    for rnd in plan:
        reqs = []
        for i, k in rnd:
            wav = audio[i][k * chunk:(k + 1) * chunk]
            if bad_every and (i * chunks + k) % bad_every == bad_every - 1 and 0 < k < chunks - 1:
                wav = wav.copy()
                wav[3] = np.nan  # refused: costs only itself
            reqs.append(chunk_request(cids[i], wav, k == 0, k == chunks - 1))
        for b in range(0, len(reqs), batch):
            part = reqs[b:b + batch]
            if profiler is not None:
                profiler.enable()
            clock.executing = True
            c = time.process_time()
            out = model.execute(part)
            total += time.process_time() - c
            clock.executing = False
            if profiler is not None:
                profiler.disable()
            batches += 1
            if len(out) != len(part):
                raise AssertionError("one response per request")
            for r in out:
                errors += r.has_error()
                digest_update(h, r)
            served += len(part)
    wall = time.perf_counter() - t0
    if model.streams:
        raise AssertionError(f"{len(model.streams)} streams left")
    return {"streams": n_streams, "batch": batch, "chunks_per_stream": chunks, "requests": served,
            "batches": batches, "errors": errors, "wall_s": wall,
            "execute_cpu_ms_per_chunk": 1000 * total / served,
            "model_cpu_ms_per_chunk": 1000 * clock.total / served,
            "open_cpu_ms_per_chunk": 1000 * clock.opened / served,
            "overhead_cpu_ms_per_chunk": 1000 * (total - clock.total - clock.opened - clock.gc) / served,
            "gc_outside_model_cpu_ms_per_chunk": 1000 * clock.gc / served,
            "digest": h.hexdigest()[:16]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="default: models/demo_zh_synth")
    ap.add_argument("--repo", default=None, help="a rendered repository (default: build one in a temp dir)")
    ap.add_argument("--streams", default="256,1024,2048")
    ap.add_argument("--batch", type=int, default=256, help="requests per execute() (dynamic batch)")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per stream")
    ap.add_argument("--chunk-ms", type=float, default=640)
    ap.add_argument("--stagger", type=int, default=3, help="rounds over which stream starts are spread")
    ap.add_argument("--repeat", type=int, default=1, help="runs per stream count; the median is kept")
    ap.add_argument("--threads", type=int, default=1, help="threads of the chunk encoder")
    ap.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "torch_cuda"),
                    help="chunk encoder: the onnxruntime export (CPU hosts) or the GPU engine's "
                    "(what the H200 serves; here eager fp32 on the CPU, its streams in slot pools)")
    ap.add_argument("--fbank", default="knf", choices=("knf", "torch"),
                    help="knf per stream (CPU hosts) or one batched torch fbank per batch (GPU hosts)")
    ap.add_argument("--bad-every", type=int, default=0, help="every k-th chunk carries a NaN (0: none)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="one more pass with N streams under cProfile (the overhead only)")
    ap.add_argument("--out", default=None, help="CSV to write (+ .png with --plot, + _profile.txt)")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--baseline", default=None, help="a CSV of an earlier version, plotted beside")
    a = ap.parse_args(argv)
    pb = fake_pb_utils()
    stream_model.pb_utils = triton_models.pb_utils = pb
    model_dir = a.model_dir or default_model_dir()
    tmp = None
    repo = a.repo
    if repo is None:
        tmp = tempfile.TemporaryDirectory(prefix="stream_execute_")
        # rescore local: the checkpoint is shipped too (the torch_cuda chunk encoder loads it)
        repo = build_repo(model_dir, os.path.join(tmp.name, "repo"),
                          overrides={"streaming": {"rescore": "local"}})
    counts = [int(x) for x in a.streams.split(",")]
    model = open_model(repo, max(counts), a.batch, a.threads, a.engine, a.fbank)
    model.decoder_clock = ModelClock(model.decoder)
    rate = model.rate
    chunk = int(a.chunk_ms / 1000 * rate)
    wavs = [read_audio(f, rate) for f in sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.wav")))]
    n = chunk * a.chunks
    audio = [np.resize(wavs[i % len(wavs)], n).astype(np.float32) for i in range(max(counts))]
    run(model, audio, min(8, max(counts)), a.chunks, chunk, a.batch, a.stagger)  # warm up
    rows = []
    for ns in counts:
        runs = [run(model, audio, ns, a.chunks, chunk, a.batch, a.stagger, a.bad_every) for _ in range(a.repeat)]
        if len({r["digest"] for r in runs}) != 1:
            raise AssertionError(f"responses differ between runs: {[r['digest'] for r in runs]}")
        runs.sort(key=lambda r: r["overhead_cpu_ms_per_chunk"])
        row = dict(runs[len(runs) // 2])
        row["overhead_min_ms_per_chunk"] = runs[0]["overhead_cpu_ms_per_chunk"]
        row["overhead_max_ms_per_chunk"] = runs[-1]["overhead_cpu_ms_per_chunk"]
        rows.append(row)
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
    prof_text = None
    if a.profile:
        prof = cProfile.Profile()
        run(model, audio, min(a.profile, len(audio)), a.chunks, chunk, a.batch, a.stagger, a.bad_every,
            profiler=prof)
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        prof_text = s.getvalue()
        print(prof_text)
    model.finalize()
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if prof_text:
            with open(os.path.splitext(a.out)[0] + "_profile.txt", "w") as f:
                f.write(prof_text)
        if a.plot:
            plot(rows, a.baseline, os.path.splitext(a.out)[0] + ".png", a)
    if tmp is not None:
        tmp.cleanup()


def plot(rows, baseline, path, a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    if baseline:
        with open(baseline) as f:
            series.append(("before", list(csv.DictReader(f))))
    series.append(("after" if baseline else "overhead", rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    labels = [str(r["streams"]) for r in rows]
    x = np.arange(len(rows))
    for j, (name, rs) in enumerate(series):
        by = {str(r["streams"]): float(r["overhead_cpu_ms_per_chunk"]) for r in rs}
        v = [by.get(k, np.nan) for k in labels]
        bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, v, width, label=f"{name}: execute() overhead")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    model_ms = [float(r["model_cpu_ms_per_chunk"]) for r in rows]
    ax.plot(x, model_ms, "k.", label="model work (advance + finish), for scale")
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_xlabel(f"live streams (batches of {a.batch} chunks)")
    ax.set_ylabel("CPU ms per chunk")
    ax.set_title(f"Streaming.execute() on the CPU, {a.chunk_ms:g} ms chunks, demo model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
