"""Triton python-backend models of the `attention_rescoring` ensemble.

feature_extractor -> encoder -> scoring (CTC prefix beam search, BLS call to decoder); with
`feature_device: encoder` fbank runs inside the encoder model (feature_extractor unused).
Every model takes *ragged* requests (one utterance or one padded batch each), pads them
together, runs one batched engine call and splits the result, so requests of different
lengths share a dynamic batch and still get exactly what they would get alone.
A bad request gets an error of its own; the others in its batch are served.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

import numpy as np

from wenet_triton.audio.frontend import Fbank, check_waveform, min_samples, num_frames
from wenet_triton.contract import EngineSettings, in_unit_range
from wenet_triton.decode.options import load_lm
from wenet_triton.decode.search import ctc_prefix_beam_search_batch, pick_rescored, rescoring_inputs
from wenet_triton.decode.vocab import Vocab

try:  # only inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets the module be imported for docs and linting
    pb_utils = None


def _params(args) -> Dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def _version_dir(args) -> str:
    return os.path.join(args["model_repository"], str(args["model_version"]))


def _error(msg: str, invalid_input: bool = False):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_input else None
    err = pb_utils.TritonError(msg, code) if code is not None else pb_utils.TritonError(msg)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


# Triton 24.10's python backend stub loses numeric outputs built from numpy >= 2 arrays
# (they arrive with 0 bytes); hand those over through DLPack instead.
_DLPACK_OUTPUTS = int(np.__version__.split(".")[0]) >= 2 or os.environ.get("WENET_TRITON_DLPACK") == "1"


def _tensor(name: str, arr: np.ndarray):
    arr = np.ascontiguousarray(arr)
    if _DLPACK_OUTPUTS and arr.dtype != np.object_:
        import torch
        from torch.utils.dlpack import to_dlpack

        return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(arr)))
    return pb_utils.Tensor(name, arr)


def _input(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _inputs(request) -> Dict[str, object]:
    """The request's input tensors by name, listed once (`pb_utils.get_input_tensor_by_name`
    lists them all again and compares names for every input it looks up)."""
    return {t.name(): t for t in request.inputs()}


def _device(args, params) -> str:
    if params.get("device", "cpu") == "cuda" or args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


def _instance_device(args, params) -> str:
    """_device(), made this process's current CUDA device: each Triton instance is a stub
    process of its own, and what follows the current device (streams, events, pinned
    buffers, CUDA graphs, our kernels' launches) then runs on the instance's GPU, with no
    stray context on GPU 0 (instance_group KIND_GPU gpus: [...], docs/multigpu.md)."""
    dev = _device(args, params)
    if dev.startswith("cuda:"):
        import torch

        torch.cuda.set_device(dev)
    return dev


def _cat_padded(arrays: List[np.ndarray], axis: int, fill=0, width: int = 0) -> np.ndarray:
    """Concatenate along dim 0 arrays that may differ along `axis` (padded with fill, to at
    least `width`)."""
    n = max(width, max(a.shape[axis] for a in arrays))
    out = []
    for a in arrays:
        if a.shape[axis] < n:
            pad = [(0, 0)] * a.ndim
            pad[axis] = (0, n - a.shape[axis])
            a = np.pad(a, pad, constant_values=fill)
        out.append(a)
    return np.concatenate(out, axis=0)


def _request_name(request) -> str:
    """' (request "ID")' for error messages when the client gave a request id, else ''."""
    try:
        rid = request.request_id()
    except Exception:  # noqa: BLE001 - a stub without request ids
        rid = ""
    return f' (request "{rid}")' if rid else ""


def _isolated(fn, requests, stage: str) -> List:
    """fn(requests) -> responses, run on the whole batch; when it raises, each request runs
    alone so that only the requests that fail get an error (their own) and the others in
    the batch are served."""
    try:
        return fn(requests)
    except Exception as e:  # noqa: BLE001 - turned into that request's error
        if len(requests) == 1:
            print(f"[{stage}] request failed{_request_name(requests[0])}:\n"
                  f"{traceback.format_exc(limit=4)}", flush=True)
            return [_error(f"{stage} failed{_request_name(requests[0])}: {e}")]
    return [_isolated(fn, [r], stage)[0] for r in requests]


def _audio_groups(requests, sizes: List[tuple], cap: float) -> List[List[int]]:
    """Consecutive request indices grouped so that each group's padded size (rows x longest
    length, from sizes[i] = (rows, length)) stays within cap (0: one group). Bounds the
    memory one engine call takes, whatever the dynamic batch holds."""
    if not cap or len(requests) <= 1:
        return [list(range(len(requests)))]
    groups, cur, rows, longest = [], [], 0, 0
    for i, (b, t) in enumerate(sizes):
        if cur and (rows + b) * max(longest, t) > cap:
            groups.append(cur)
            cur, rows, longest = [], 0, 0
        cur.append(i)
        rows, longest = rows + b, max(longest, t)
    return groups + [cur]


def _input_size(request, name: str) -> tuple:
    """(rows, length) of a [B, T, ...] input without copying it."""
    t = pb_utils.get_input_tensor_by_name(request, name)
    shape = list(t.shape()) if t is not None else []
    return (int(shape[0]) if shape else 0, int(shape[1]) if len(shape) > 1 else 0)


def _batch_cap(params, args, per_second_of: str) -> float:
    """max_batch_audio_seconds as rows x length of this model's main input: 'samples',
    'frames' (fbank) or 'encoder_frames'; 0 when unset."""
    sec = float(params.get("max_batch_audio_seconds", "0") or 0)
    if sec <= 0:
        return 0.0
    st = EngineSettings.load(_version_dir(args))
    fps = 1000.0 / st.fbank.frame_shift_ms
    rate = {"samples": float(st.fbank.sample_rate), "frames": fps,
            "encoder_frames": fps / st.subsampling_rate}[per_second_of]
    return sec * rate


def _run_grouped(fn, requests, main_input: str, cap: float, stage: str) -> List:
    """fn over groups of requests of bounded padded size (cap, see _audio_groups), each
    group's failures isolated per request."""
    sizes = [_input_size(r, main_input) for r in requests] if cap and len(requests) > 1 else []
    out: List = []
    for group in _audio_groups(requests, sizes, cap):
        out += _isolated(fn, [requests[i] for i in group], stage)
    return out


def settle_heap() -> None:
    """After a model's initialize(): one full collection, then gc.freeze(), so that the
    objects loading made (torch, onnxruntime, the model, the LM: ~180,000 tracked objects)
    sit in the permanent generation and Python's later full collections traverse only what
    serving made. A full collection over the loaded heap takes ~100 ms on the dev CPU and
    stalls every request of the instance meanwhile. Only inside Triton's stub (a process of
    one model instance; not a test or benchmark that runs a model in its own process).
    WENET_TRITON_GC_FREEZE=0 leaves the heap as it is."""
    if os.environ.get("WENET_TRITON_GC_FREEZE", "1") != "0" and \
            "triton_python_backend_utils" in sys.modules:
        gc.collect()
        gc.freeze()


def settles_heap(cls):
    """Class decorator of the python-backend models: settle_heap() after initialize()."""
    init = cls.initialize

    @functools.wraps(init)
    def initialize(self, args):
        init(self, args)
        settle_heap()

    cls.initialize = initialize
    return cls


class _StageTimer:
    """Per-stage wall time of execute() when WENET_TRITON_PROFILE=N (seconds between
    reports, printed to the server log): mean ms per batch and utterances per batch."""
    def __init__(self, model: str):
        self.every = float(os.environ.get("WENET_TRITON_PROFILE", "0") or 0)
        self.model, self.sums, self.batches, self.utts = model, {}, 0, 0
        self.last = self.t = 0.0

    def start(self):
        if self.every:
            self.t = time.perf_counter()
            self.last = self.last or self.t

    def mark(self, stage: str):
        if self.every:
            now = time.perf_counter()
            self.sums[stage] = self.sums.get(stage, 0.0) + now - self.t
            self.t = now

    def done(self, utts: int):
        if not self.every:
            return
        self.batches += 1
        self.utts += utts
        if self.t - self.last >= self.every:
            parts = "  ".join(f"{k} {v / self.batches * 1e3:.2f}" for k, v in self.sums.items())
            print(f"[profile {self.model}] {self.batches} batches, {self.utts / self.batches:.1f} utts/batch; "
                  f"ms per batch: {parts}", flush=True)
            self.sums, self.batches, self.utts, self.last = {}, 0, 0, self.t


def _open_engine(args, params, parts):
    from wenet_triton.engines import open_engine

    vdir = _version_dir(args)
    mdir = os.path.join(vdir, "model")  # checkpoint shipped for the torch engines
    return open_engine(vdir, params.get("engine", "onnxruntime"),
                       device=_instance_device(args, params), dtype=params.get("dtype") or None,
                       model_dir=mdir if os.path.isdir(mdir) else None,
                       threads=int(params.get("threads", "0")), parts=parts)


def _max_batch(args) -> int:
    """The model's max_batch_size as Triton gives it in `args` (16 where absent, at least 1)."""
    return int(json.loads(args.get("model_config", "{}")).get("max_batch_size", 16) or 1)


def _at_load(model: str, what: str, otherwise: str, fn, said) -> None:
    """A preparation at a model's load: fn() -> (things done, seconds); said(n, seconds) is
    logged when it did something. A failure is logged (what failed, what happens instead) and
    serving goes on without it."""
    try:
        n, took = fn()
    except Exception as e:  # noqa: BLE001 - a preparation, not a condition of serving
        print(f"[{model}] {what} at load failed ({type(e).__name__}: {e}); {otherwise}", flush=True)
        return
    if n:
        print(f"[{model}] {said(n, took)}", flush=True)


def _warm_kernels(engine, params, args, model: str) -> None:
    """torch_cuda: tune its autotuned Triton kernels at load for every batch this model can be
    given (CudaEngine.warm_kernels), not on the first live batch of each size. The largest
    batch: max_batch_audio_seconds (or max_batch_size x max_audio_seconds) in encoder
    frames, twice over (batches are padded up to a power of two)."""
    warm = getattr(engine, "warm_kernels", None)
    if warm is None:
        return
    cap = _batch_cap(params, args, "encoder_frames")
    if cap <= 0:
        st = EngineSettings.load(_version_dir(args))
        max_batch = _max_batch(args)
        cap = (max_batch * float(params.get("max_audio_seconds", "60"))
               * 1000.0 / st.fbank.frame_shift_ms / st.subsampling_rate)
    rows = int(min(2 * cap, 1 << 17))
    _at_load(model, "tuning the Triton kernels", "they tune on first use instead", lambda: warm(rows),
             lambda n, took: f"Triton kernels tuned for {n} size classes of rows (up to {rows}) at load "
                             f"in {took:.1f} s")


def _warm_graphs(engine, params, args, model: str) -> None:
    """torch_cuda: capture the encoder's CUDA graphs at load for every (batch, length) bucket
    that requests of up to `warm_graphs_seconds` (parameter; 0: none) can need, so that the
    first live batches of each size do not wait for captures (without it the first 64 x 10 s
    requests after a start waited up to 3.1 s on an H200, with it 0.58 s; 2026-12-04). Bounded by the model's
    max_batch_size and max_batch_audio_seconds and by warm_graphs_budget_s (default 120)."""
    warm = getattr(engine, "warm_encoder", None)
    seconds = float(params.get("warm_graphs_seconds", "0") or 0)
    if warm is None or seconds <= 0:
        return
    st = EngineSettings.load(_version_dir(args))
    max_batch = _max_batch(args)
    frames = int(seconds * 1000.0 / st.fbank.frame_shift_ms)
    rows = int(_batch_cap(params, args, "encoder_frames"))
    budget = float(params.get("warm_graphs_budget_s", "120"))
    _at_load(model, "capturing the encoder's CUDA graphs", "they are captured on first use instead",
             lambda: warm(max_batch, frames, budget_s=budget, max_rows=rows),
             lambda n, took: f"encoder CUDA graphs captured for {n} (batch, length) buckets up to "
                             f"{seconds:g} s at load in {took:.1f} s")


def check_amplitude(w: np.ndarray, int16_range: bool, at: str = "") -> np.ndarray:
    """Samples must lie in [-1, 1] (fbank scales them to int16 range; 1e35 overflows it);
    with int16_range, int16-range audio (|x| <= 32768) is scaled to [-1, 1] instead."""
    if not w.size:
        return w
    peak = float(np.max(np.abs(w)))
    if peak <= 1.0:
        return w
    if int16_range and peak <= 32768.0:
        return (w / np.float32(32768.0)).astype(np.float32)
    i = int(np.argmax(np.abs(w)))
    raise ValueError(f"WAV{at}: sample {i} is {w[i]:.6g}, outside [-1, 1]: send float audio "
                     "scaled to [-1, 1]" + ("" if int16_range else
                                            " (or build the repository with accept_int16_range)"))


class _WavFrontend:
    """Checks WAV/WAV_LENS requests and turns the good ones into fbank features. device cpu:
    per request (frontend.Fbank: kaldi-native-fbank, or torch on one thread); cuda: one
    batched torch fbank per dynamic batch (torch_fbank.TorchFbank). Shared by the
    feature_extractor model and the encoder when fbank runs in its process."""

    def __init__(self, args, params, device: str):
        self.conf = EngineSettings.load(_version_dir(args)).fbank
        if device.startswith("cuda"):
            from wenet_triton.audio.torch_fbank import TorchFbank

            self.torch_fbank = TorchFbank(self.conf, device)
            self.fbank_batch = self.torch_fbank.batch
        else:
            self.torch_fbank = None
            fb = Fbank(self.conf, params.get("fbank_impl", "knf"))
            if fb.impl == "torch":  # one utterance at a time: one thread is fastest
                import torch

                torch.set_num_threads(1)
            self.fbank_batch = lambda wavs: [fb(w) for w in wavs]
        self.max_seconds = float(params.get("max_audio_seconds", "60"))
        self.min_frames = int(params.get("min_frames", "7"))
        self.window = min_samples(self.conf)
        # int16-range samples (|x| <= 32768) are scaled to [-1, 1]; otherwise |x| > 1 is an error
        self.int16_range = params.get("accept_int16_range", "false").lower() == "true"
        mb = float(params.get("max_batch_audio_seconds", "0") or 0)
        self.max_request_samples = mb * self.conf.sample_rate if mb > 0 else 0

    def waveforms(self, request, defer_range: bool = False) -> List[np.ndarray]:
        """A request's utterances: WAV [B, N] + WAV_LENS [B, 1], one row each (B >= 1).
        defer_range: float32 rows are not scanned for samples outside [-1, 1] here (the
        caller checks them while staging them, and calls recheck() for the rows that fail)."""
        tensors = _inputs(request)
        for name in ("WAV", "WAV_LENS"):
            if name not in tensors:
                raise ValueError(f"input {name} missing")
        wav, lens = tensors["WAV"].as_numpy(), tensors["WAV_LENS"].as_numpy().reshape(-1)
        if wav.ndim != 2:
            raise ValueError(f"WAV must be [rows, samples], got shape {list(wav.shape)}")
        if wav.shape[1] == 0:
            raise ValueError("empty WAV (0 samples)")
        rate, limit = self.conf.sample_rate, self.max_seconds * self.conf.sample_rate
        if wav.shape[1] > limit:  # the buffer, whatever WAV_LENS says
            raise ValueError(f"WAV buffer of {wav.shape[1]} samples ({wav.shape[1] / rate:.1f} s) "
                             f"is longer than the configured maximum of {self.max_seconds:g} s")
        if len(lens) != wav.shape[0]:
            raise ValueError(f"WAV has {wav.shape[0]} rows but WAV_LENS {len(lens)}")
        if self.max_request_samples and wav.size > self.max_request_samples:
            raise ValueError(f"request carries {wav.size / rate:.1f} s of audio ({wav.shape[0]} rows "
                             f"x {wav.shape[1]} samples); the most one request may carry is "
                             f"{self.max_request_samples / rate:g} s (max_batch_audio_seconds)")
        out = []
        for row in range(wav.shape[0]):
            at = f" (row {row})" if wav.shape[0] > 1 else ""
            n = int(lens[row])
            if n <= 0 or n > wav.shape[1]:
                raise ValueError(f"WAV_LENS {n} outside 1..{wav.shape[1]} (the WAV length){at}")
            w = wav[row, :n]
            # float32 in [-1, 1] passes check_waveform and the amplitude check unchanged
            if not (w.dtype == np.float32 and (defer_range or in_unit_range(w))):
                w = self.full_check(w, at)
            if n < self.window:
                raise ValueError(f"audio of {n} samples is shorter than one "
                                 f"{self.conf.frame_length_ms:g} ms frame{at}")
            if num_frames(self.conf, n) < self.min_frames:
                ms = self.min_frames * self.conf.frame_shift_ms + self.conf.frame_length_ms
                raise ValueError(f"audio of {n} samples is too short: at least ~{ms:.0f} ms needed{at}")
            out.append(w)
        return out

    def full_check(self, w: np.ndarray, at: str = "") -> np.ndarray:
        """The checks that name what is wrong with a row (NaN/inf, type, amplitude) -> the row
        as float32 in [-1, 1] (int16-range audio scaled when accept_int16_range)."""
        w = check_waveform(w, "WAV" + at, self.max_seconds, self.conf.sample_rate)
        return check_amplitude(w, self.int16_range, at)

    def check(self, requests, out: List, defer_range: bool = False):
        """Valid requests' waveforms (flat) and utterance counts per request (0: invalid,
        out[i] then holds its error)."""
        wavs, counts = [], []
        for i, req in enumerate(requests):
            try:
                ws = self.waveforms(req, defer_range)
            except ValueError as e:
                out[i] = _error(f"invalid request{_request_name(req)}: {e}", invalid_input=True)
                ws = []
            wavs += ws
            counts.append(len(ws))
        return wavs, counts

    def recheck(self, requests, out: List, wavs: List[np.ndarray], counts: List[int], bad: Sequence[int]):
        """After check(defer_range=True): the rows `bad` (flat indices into wavs) fell outside
        [-1, 1]; full_check names the problem (the request gets that error and none of its
        rows stay) or scales int16-range audio -> (wavs, counts) as check() returns them."""
        owner = [(r, q) for r, c in enumerate(counts) for q in range(c)]
        fixed = dict(enumerate(wavs))
        for k in bad:
            r, q = owner[k]
            if counts[r] == 0:
                continue
            try:
                fixed[k] = self.full_check(wavs[k], f" (row {q})" if counts[r] > 1 else "")
            except ValueError as e:
                out[r] = _error(f"invalid request{_request_name(requests[r])}: {e}", invalid_input=True)
                counts[r] = 0
        keep = [k for k, (r, _) in enumerate(owner) if counts[r]]
        return [fixed[k] for k in keep], counts


@settles_heap
class FeatureExtractor:
    """WAV FP32 [-1] + WAV_LENS INT32 [1] -> speech FP32 [-1, 80], speech_lengths INT32 [1].
    Parameter `device`: cpu (per request) or cuda (one batched torch fbank per batch)."""
    def initialize(self, args):
        p = _params(args)
        dev = p.get("device", "cpu")  # cuda: the instance's GPU (KIND_GPU gpus: [...])
        self.front = _WavFrontend(args, p, _instance_device(args, p) if dev == "cuda" else dev)
        # TensorRT encoders batch only equal shapes: pad every response to the batch's longest
        self.pad_batch = p.get("pad_to_batch_max", "false").lower() == "true"

    def execute(self, requests):
        return _isolated(self._execute, requests, "feature extraction")

    def _execute(self, requests):
        out: List = [None] * len(requests)
        wavs, counts = self.front.check(requests, out)
        feats = self.front.fbank_batch(wavs) if wavs else []
        width = max((f.shape[0] for f in feats), default=0) if self.pad_batch else 0
        start = 0
        for i, n in enumerate(counts):
            if n == 0:
                continue
            fs = feats[start:start + n]
            start += n
            lens = np.array([[f.shape[0]] for f in fs], np.int32)
            out[i] = pb_utils.InferenceResponse([
                _tensor("speech", _cat_padded([f[None] for f in fs], axis=1, width=width)),
                _tensor("speech_lengths", lens)])
        return out

    def finalize(self):
        pass


@settles_heap
class Encoder:
    """speech [-1, 80], speech_lengths [1] -> WeNet GPU-export encoder outputs.
    With parameter frontend=fbank it takes the ensemble's WAV/WAV_LENS instead and computes
    fbank itself, batched on the engine's device: one GPU process for both, no feature copy."""
    OUTPUTS = ("encoder_out", "encoder_out_lens", "ctc_log_probs", "beam_log_probs",
               "beam_log_probs_idx")

    def initialize(self, args):
        p = _params(args)
        self.engine = _open_engine(args, p, ("encoder",))
        _warm_kernels(self.engine, p, args, "encoder")
        self.front = None
        self.main_input = "WAV" if p.get("frontend", "") == "fbank" else "speech"
        self.cap = _batch_cap(p, args, "samples" if self.main_input == "WAV" else "frames")
        self.timer = _StageTimer("encoder")
        if p.get("frontend", "") == "fbank":
            self.front = _WavFrontend(args, p, _device(args, p))
            if self.front.torch_fbank is not None:  # the GPU does the math; keep torch's
                import torch  # CPU thread pool from spinning on all cores

                torch.set_num_threads(2)

    def _features(self, requests, out: List):
        """(feats, lens, utterances per request) for the batch; errors go to out."""
        if self.front is None:
            xs = [_input(r, "speech") for r in requests]
            ls = [_input(r, "speech_lengths").reshape(-1).astype(np.int32) for r in requests]
            return _cat_padded(xs, axis=1), np.concatenate(ls), [x.shape[0] for x in xs]
        wavs, sizes = self.front.check(requests, out)
        self.timer.mark("check")
        if not wavs:
            return None, None, sizes
        if self.front.torch_fbank is not None and hasattr(self.engine, "encode_device"):
            return (*self.front.torch_fbank.batch_tensor(wavs), sizes)  # stays on the GPU
        feats = self.front.fbank_batch(wavs)
        lens = np.array([f.shape[0] for f in feats], np.int32)
        return _cat_padded([f[None] for f in feats], axis=1), lens, sizes

    def _encode(self, feats, lens):
        if isinstance(feats, np.ndarray):
            return self.engine.encode(feats, lens)
        return self.engine.encode_device(feats, lens)  # torch_cuda with GPU fbank

    def execute(self, requests):
        return _run_grouped(self._execute, requests, self.main_input, self.cap, "encoder")

    def _execute(self, requests):
        out: List = [None] * len(requests)
        self.timer.start()
        feats, lens, sizes = self._features(requests, out)
        self.timer.mark("fbank")
        enc = self._encode(feats, lens) if feats is not None else None
        self.timer.mark("encode")
        start = 0
        for i, (req, n) in enumerate(zip(requests, sizes)):
            if n == 0:
                continue
            lens_i = enc["encoder_out_lens"][start:start + n]
            t = int(lens_i.max())
            wanted = set(req.requested_output_names()) or set(self.OUTPUTS)
            tensors = []
            for name in self.OUTPUTS:
                if name not in wanted or name not in enc:
                    continue
                v = enc[name][start:start + n]
                v = v.reshape(n, 1) if name == "encoder_out_lens" else v[:, :t]
                tensors.append(_tensor(name, v))
            out[i] = pb_utils.InferenceResponse(tensors)
            start += n
        self.timer.mark("responses")
        self.timer.done(start)
        return out

    def finalize(self):
        pass


@settles_heap
class Decoder:
    """WeNet GPU-export decoder: n-best hyps + CTC scores -> best_index [1], score [beam]."""
    def initialize(self, args):
        p = _params(args)
        self.engine = _open_engine(args, p, ("decoder",))
        self.cap = _batch_cap(p, args, "encoder_frames")
        self.eos = self.engine.settings.eos
        self.reverse = self.engine.settings.decoder_has_reverse_input

    def execute(self, requests):
        return _run_grouped(self._execute, requests, "encoder_out", self.cap, "decoder")

    def _execute(self, requests):
        get = lambda name: [_input(r, name) for r in requests]  # noqa: E731
        sizes = [x.shape[0] for x in get("encoder_out")]
        enc = _cat_padded(get("encoder_out"), axis=1)
        enc_lens = np.concatenate([x.reshape(-1) for x in get("encoder_out_lens")])
        hyps = _cat_padded(get("hyps_pad_sos_eos"), axis=2, fill=self.eos)
        lens = np.concatenate(get("hyps_lens_sos"))
        rhyps = _cat_padded(get("r_hyps_pad_sos_eos"), axis=2, fill=self.eos) \
            if self.reverse else hyps
        ctc = np.concatenate(get("ctc_score"))
        best, score = self.engine.rescore(enc, enc_lens, hyps, lens, rhyps, ctc)
        out, start = [], 0
        for n in sizes:
            out.append(pb_utils.InferenceResponse([
                _tensor("best_index", best[start:start + n].reshape(n, 1).astype(np.int32)),
                _tensor("score", score[start:start + n].astype(np.float32))]))
            start += n
        return out

    def finalize(self):
        pass


@settles_heap
class Scoring:
    """CTC prefix beam search + attention rescoring (BLS to `decoder`) -> TRANSCRIPTS."""
    def initialize(self, args):
        p = _params(args)
        vdir = _version_dir(args)
        self.settings = EngineSettings.load(vdir)
        self.vocab = Vocab.from_engine_dir(vdir, self.settings)
        self.decoder_name = p.get("decoder_model", "decoder")
        self.rescoring = p.get("rescoring", "true").lower() == "true"
        self.chunk = int(p.get("decoder_max_batch_size", "16"))
        self.lm, self.lm_weight, self.lm_rescore_weight, self.length_bonus = None, 0.0, 0.0, 0.0
        if p.get("lm_file"):  # n-gram LM fusion (decoding.yaml / --lm when the repo was built)

            self.lm = load_lm(os.path.join(vdir, p["lm_file"]), self.vocab.tokens)
            self.lm_weight = float(p.get("lm_weight", "0.5"))
            self.lm_rescore_weight = float(p.get("lm_rescore_weight", "0.5"))
            self.length_bonus = float(p.get("length_bonus", "0"))
        self.timer = _StageTimer("scoring")
        self.cap = _batch_cap(p, args, "encoder_frames")

    def execute(self, requests):
        return _run_grouped(self._execute, requests, "encoder_out", self.cap, "scoring")

    def _execute(self, requests):
        self.timer.start()
        beam, s = self.settings.beam_size, self.settings
        encs, lens, nbest, sizes = [], [], [], []
        for r in requests:
            lp, idx = _input(r, "beam_log_probs"), _input(r, "beam_log_probs_idx")
            ln = _input(r, "encoder_out_lens").reshape(-1)
            nbest += ctc_prefix_beam_search_batch(lp, idx, ln, beam, s.blank, self.lm,
                                                  self.lm_weight, self.length_bonus)
            encs.append(_input(r, "encoder_out"))
            lens.append(ln.astype(np.int32))
            sizes.append(len(ln))
        self.timer.mark("search")
        best = [0] * len(nbest)
        if self.rescoring:
            enc, enc_lens = _cat_padded(encs, axis=1), np.concatenate(lens)
            for i in range(0, len(nbest), self.chunk):  # the decoder's max batch each
                j = i + self.chunk
                t = int(enc_lens[i:j].max())
                picked, scores = self._rescore(
                    np.ascontiguousarray(enc[i:j, :t]), enc_lens[i:j],
                    rescoring_inputs(nbest[i:j], beam, s.sos, s.eos))
                best[i:j] = [pick_rescored(h, sc, b, self.lm_rescore_weight)
                             for h, sc, b in zip(nbest[i:j], scores, picked)]
        self.timer.mark("rescore_bls")
        out, k = [], 0
        for n in sizes:
            texts = []
            for _ in range(n):
                hyps = nbest[k]
                ids = hyps[best[k]][0] if best[k] < len(hyps) else ()
                texts.append([self.vocab.text(ids).encode("utf-8")])
                k += 1
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TRANSCRIPTS", np.array(texts, dtype=np.object_))]))
        self.timer.mark("responses")
        self.timer.done(k)
        return out

    def _rescore(self, enc, enc_lens, packed):
        """BLS to the decoder -> (best_index list, score (B, beam))."""
        pad, hl, rpad, ctc = packed
        inputs = [_tensor("encoder_out", enc), _tensor("encoder_out_lens", enc_lens.reshape(-1, 1)),
                  _tensor("hyps_pad_sos_eos", pad), _tensor("hyps_lens_sos", hl),
                  _tensor("ctc_score", ctc)]
        if self.settings.decoder_has_reverse_input:
            inputs.append(_tensor("r_hyps_pad_sos_eos", rpad))
        resp = pb_utils.InferenceRequest(model_name=self.decoder_name, inputs=inputs,
                                         requested_output_names=["best_index", "score"]).exec()
        if resp.has_error():
            raise RuntimeError(resp.error().message())
        get = lambda n: pb_utils.get_output_tensor_by_name(resp, n).as_numpy()  # noqa: E731
        return get("best_index").reshape(-1).tolist(), get("score")

    def finalize(self):
        pass


# --- serving.yaml `pipeline: fused`: the whole recognizer in one python model -----------------

class _Timings:
    """Per-stage time of the fused model when WENET_TRITON_PROFILE=N (seconds between reports,
    printed to the server log). Its stages run on several threads at once, so each adds its
    own duration: mean ms per batch per stage as wall / CPU (the calling thread's CPU time
    over the same span: wall minus CPU is waiting, for the GIL, a lock or the GPU), utterances
    per batch and the most batches that were past the device stage at once. A thread's
    stages are contiguous spans: begin() starts its CPU clock, each add() ends a span."""
    def __init__(self, model: str, unit: str = "utts"):
        self.every = float(os.environ.get("WENET_TRITON_PROFILE", "0") or 0)
        self.model, self.unit, self.lock = model, unit, threading.Lock()
        self.sums: Dict[str, List[float]] = {}
        self.batches = self.utts = self.most_inflight = 0
        self.last = time.perf_counter()
        self.local = threading.local()
        # Python's cyclic GC pauses the thread that triggers it (every stage of this process
        # waits for the GIL meanwhile): per generation, collections / total / longest ms
        self.gc_stats: Dict[int, List[float]] = {}
        self._gc_start = 0.0
        if self.every:
            gc.callbacks.append(self._gc)

    def close(self):
        """Stop counting GC pauses (the model's finalize; tests)."""
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: Dict):
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_start
        st = self.gc_stats.setdefault(info.get("generation", 2), [0, 0.0, 0.0])
        st[0] += 1
        st[1] += took
        st[2] = max(st[2], took)

    def begin(self):
        if self.every:
            self.local.cpu = time.thread_time()

    def add(self, stage: str, seconds: float):
        if self.every:
            now = time.thread_time()
            cpu = now - getattr(self.local, "cpu", now)
            self.local.cpu = now
            with self.lock:
                acc = self.sums.setdefault(stage, [0.0, 0.0])
                acc[0] += seconds
                acc[1] += cpu

    def split(self, stage: str, since: float) -> float:
        """End the span of `stage` that began at `since` (perf_counter) -> now, the next span's start."""
        now = time.perf_counter()
        self.add(stage, now - since)
        return now

    def done(self, utts: int, inflight: int):
        if not self.every:
            return
        with self.lock:
            self.batches += 1
            self.utts += utts
            self.most_inflight = max(self.most_inflight, inflight)
            now = time.perf_counter()
            if now - self.last < self.every:
                return
            print(self.report(), flush=True)
            self.sums, self.batches, self.utts, self.most_inflight, self.last = {}, 0, 0, 0, now
            self.gc_stats = {}

    def report(self) -> str:
        n = max(self.batches, 1)
        parts = "  ".join(f"{k} {w / n * 1e3:.2f}/{c / n * 1e3:.2f}" for k, (w, c) in self.sums.items())
        gcs = "  ".join(f"gen{g} {int(c)}x {t * 1e3:.1f} ms (longest {m * 1e3:.1f})"
                        for g, (c, t, m) in sorted(self.gc_stats.items()))
        return (f"[profile {self.model}] {self.batches} batches, {self.utts / n:.1f} {self.unit}/batch, up to "
                f"{self.most_inflight} in flight; ms per batch, wall/CPU: {parts}"
                + (f"; gc: {gcs}" if gcs else ""))


class _FusedBatch:
    """One group of requests from its checks to its responses: prepared (features, or samples
    staged for the GPU fbank) until the device stage fills in the encoder's outputs."""
    def __init__(self, requests, counts, out, frames, staged=None, feats=None, lens=None):
        self.requests, self.counts, self.out = requests, counts, out
        self.frames = frames      # fbank frames per utterance (host)
        self.staged, self.feats, self.lens = staged, feats, lens  # the device stage's inputs
        self.host = None          # encoder_out_lens, beam_log_probs(_idx): numpy (or the GPU search)
        self.enc = self.enc_lens = None  # encoder_out (+ lens) where rescoring reads them
        self.out_frames = None    # encoder_out_lens known on the host (GPU path), numpy
        self.t_submit = 0.0


@settles_heap
class FusedAsr:
    """WAV FP32 [-1] + WAV_LENS INT32 [1] -> TRANSCRIPTS, the whole recognizer in one model
    (serving.yaml `pipeline: fused`): checks -> fbank -> encoder -> CTC prefix beam search
    (C++, with the LM) -> rescoring inputs -> attention decoder on the same engine object
    (no BLS) -> best hypothesis -> text, for the dynamic batch it holds.

    Threads. execute() (Triton's thread) checks the requests and prepares them (samples
    staged for the GPU fbank, or CPU fbank), runs the device stage (fbank + encoder; on a GPU
    under `gpu_lock`), hands the batch to `batch_pool` and returns None: Triton gives this
    instance its next batch while earlier ones are searched, so the encoder of batch N+1
    overlaps the search of batch N. Parameter device_stage=batch leaves the device stage to
    the batch thread too, so that Triton's one thread per instance carries only checks and
    staging (configs/serving_gpu.yaml sets it: with 4 instances it served 14-15 % more on an
    H200 at c384-512, 2026-12-02; the template keeps execute). Each
    batch's search is split over `search_pool` (the C++ search releases the GIL); on a GPU
    its rescoring takes `gpu_lock` again. Responses go out through each request's response
    sender. At most `max_inflight` batches are past the device stage at once; beyond that
    execute() waits, Triton's queue holds the requests and dynamic batches grow.
    Parameter async_responses=false: execute() answers its batch itself (no overlap across
    batches, for Triton releases without response senders in non-decoupled models).

    Guarantees as in the ensemble: ragged requests batched together each get what they
    would get alone, a bad request gets its own error (validation per request; a failure
    later reruns each request of the group alone), max_batch_audio_seconds groups."""

    def initialize(self, args):
        p = _params(args)
        vdir = _version_dir(args)
        self.settings = EngineSettings.load(vdir)
        self.vocab = Vocab.from_engine_dir(vdir, self.settings)
        self.engine = _open_engine(args, p, ("encoder", "decoder"))
        _warm_kernels(self.engine, p, args, "fused")
        _warm_graphs(self.engine, p, args, "fused")
        # torch_cuda: encoder_out stays on the GPU between the encoder and the decoder
        self.on_device = hasattr(self.engine, "encode_tensors") and hasattr(self.engine, "rescore_tensors")
        fbank_dev = _device(args, p) if p.get("fbank_device", "engine") == "engine" else "cpu"
        self.front = _WavFrontend(args, p, fbank_dev)
        if self.front.torch_fbank is not None:  # the GPU does the math; keep torch's CPU pool small
            import torch

            torch.set_num_threads(2)
        self.gpu_fbank = self.front.torch_fbank is not None and self.on_device
        self.rescoring = p.get("rescoring", "true").lower() == "true"
        self.chunk = max(1, int(p.get("rescore_batch", "16")))
        self.lm, self.lm_weight, self.lm_rescore_weight, self.length_bonus = None, 0.0, 0.0, 0.0
        if p.get("lm_file"):
            self.lm = load_lm(os.path.join(vdir, p["lm_file"]), self.vocab.tokens)
            self.lm_weight = float(p.get("lm_weight", "0.5"))
            self.lm_rescore_weight = float(p.get("lm_rescore_weight", "0.5"))
            self.length_bonus = float(p.get("length_bonus", "0"))
        self.cap = _batch_cap(p, args, "samples")
        self.gpu_search, self.gpu_lm = self._gpu_search_module(p.get("search_device", "auto"))
        self.search_threads = max(1, int(p.get("search_threads", "2")))
        self.min_search_chunk = max(1, int(p.get("min_search_chunk", "4")))
        self.max_inflight = max(1, int(p.get("max_inflight", "2")))
        # the batch threads' waits for the GPU search and for the ids: asleep (blocking_waits
        # true) or spinning on a core (CUDA's default with more cores than GPU processes),
        # which the stages' CPU time then counts and the instances' other threads lack
        self.blocking_waits = p.get("blocking_waits", "true").lower() == "true"
        self.async_responses = p.get("async_responses", "true").lower() == "true"
        device_stage = p.get("device_stage", "execute").lower()
        if device_stage not in ("batch", "execute"):
            raise ValueError(f"device_stage {p['device_stage']!r}: use batch (a batch thread runs "
                             "fbank + encoder) or execute (Triton's thread does)")
        self.device_stage_in_execute = device_stage == "execute"
        # one GPU: its work (fbank, encoder, decoder, graph captures, frees) one thread at a
        # time; onnxruntime / CPU torch sessions are thread-safe, so there the decoder of one
        # batch may run beside the encoder of the next (as in the ensemble's processes)
        self.gpu_lock = threading.Lock() if self.on_device else contextlib.nullcontext()
        self.slots = threading.BoundedSemaphore(self.max_inflight)
        self.inflight, self.inflight_lock = 0, threading.Lock()
        self.search_pool = ThreadPoolExecutor(self.search_threads, thread_name_prefix="search") \
            if self.search_threads > 1 else None
        self.batch_pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="batch") \
            if self.async_responses else None
        # stage_threads > 1: the rows of a batch copied into the GPU fbank's staging buffer (and
        # range-checked) on that many threads. Off by default: with 4 the stage took 6-8 ms
        # of wall time per batch of 31 (H200, 2026-12-02) against 3 for one thread in 6623f55,
        # each row's thread waiting for the GIL that the batch threads hold
        n = int(p.get("stage_threads", "1"))
        self.stage_pool = ThreadPoolExecutor(n, thread_name_prefix="stage") if self.gpu_fbank and n > 1 else None
        self.timer = _Timings("fused")
        if float(p.get("warm_graphs_seconds", "0") or 0) > 0:
            self._warm_pipeline()

    def _warm_pipeline(self):
        """GPU path, at load: one second of silence through fbank, encoder, search, decoder
        and pick, so that the first live batch does not load those kernels (CUDA loads a
        module on its first launch) or capture the first decoder graph: in the first batches
        after a start (H200, 2026-12-04) the GPU fbank took 70-180 ms and rescoring 190-250 ms
        once per instance. A failure is reported; serving goes on."""
        if not (self.on_device and self.gpu_fbank):
            return

        def run():
            t = time.perf_counter()
            staged = self.front.torch_fbank.stage([np.zeros(int(self.front.conf.sample_rate), np.float32)])
            batch = _FusedBatch([None], [1], [None], staged.frames, staged=staged)
            self._device_stage(batch)
            self._back(batch)
            return 1, time.perf_counter() - t

        _at_load("fused", "the pipeline's run", "its kernels load on the first live batch instead", run,
                 lambda n, took: f"one utterance through the whole pipeline at load in {took:.2f} s")

    def _gpu_search_module(self, where: str):
        """search_device: gpu (the CUDA search: the n-best, decoder inputs and pick stay on the
        GPU), cpu (the C++ search on threads) or auto (gpu with the torch_cuda engine and the
        kernels built) -> (engines.gpu_search or None, its LM tables or None)."""
        if where not in ("auto", "gpu", "cpu"):
            raise ValueError(f"search_device {where!r}: use auto, gpu or cpu")
        if where == "cpu" or not self.on_device or not str(self.engine.device).startswith("cuda"):
            if where == "gpu":
                raise ValueError("search_device gpu needs the torch_cuda engine on a GPU")
            return None, None
        from wenet_triton.engines import gpu_search, kernels

        if not kernels.available():
            if where == "gpu":
                raise RuntimeError("search_device gpu: the CUDA kernels are not built "
                                   "(run `wenet-triton build-plugins`)")
            return None, None
        import torch

        lm = gpu_search.GpuLM(self.lm, self.engine.device) if self.lm is not None else None
        # the search of batch N runs on its own stream, beside the encoder of batch N+1 (one
        # thread block per utterance leaves most of the GPU to it)
        self.search_stream = torch.cuda.Stream(self.engine.device)
        return gpu_search, lm

    # -- execute ------------------------------------------------------------------------
    def execute(self, requests):
        if not self.async_responses:
            return _run_grouped(self._run_sync, requests, "WAV", self.cap, "recognition")
        senders = [r.get_response_sender() for r in requests]
        sizes = [_input_size(r, "WAV") for r in requests] if self.cap and len(requests) > 1 else []
        for group in _audio_groups(requests, sizes, self.cap):
            reqs, snd = [requests[i] for i in group], [senders[i] for i in group]
            t = time.perf_counter()
            self.slots.acquire()  # beyond max_inflight batches: wait here, Triton queues
            self.timer.begin()
            self.timer.add("slot_wait", time.perf_counter() - t)
            try:
                out: List = [None] * len(reqs)
                batch = self._prepare(reqs, out)
                if batch is not None and self.device_stage_in_execute:
                    self._device_stage(batch)
            except Exception:  # noqa: BLE001 - each request alone gets its own answer
                self.slots.release()
                self._send(snd, _isolated(self._run_sync, reqs, "recognition"))
                continue
            if batch is None:  # no valid request in the group
                self.slots.release()
                self._send(snd, out)
                continue
            # invalid requests are answered now, the others when their batch is done
            self._send(snd, [o if n == 0 else None for o, n in zip(out, batch.counts)])
            batch.t_submit = time.perf_counter()
            self.batch_pool.submit(self._finish, batch, snd)
        return None

    def _finish(self, batch: _FusedBatch, senders):
        with self.inflight_lock:
            self.inflight += 1
            inflight = self.inflight
        try:
            self.timer.begin()
            self.timer.add("queue", time.perf_counter() - batch.t_submit)
            try:
                if batch.host is None:
                    self._device_stage(batch)
                self._back(batch)
                out = batch.out
            except Exception:  # noqa: BLE001 - rerun each request of the group alone
                self._release(batch)
                out = [_isolated(self._run_sync, [r], "recognition")[0] if n else None
                       for r, n in zip(batch.requests, batch.counts)]
            self._send(senders, [o if n else None for o, n in zip(out, batch.counts)])
            self.timer.done(sum(batch.counts), inflight)
        finally:
            with self.inflight_lock:
                self.inflight -= 1
            self.slots.release()

    @staticmethod
    def _send(senders, responses):
        for s, r in zip(senders, responses):
            if r is None:
                continue
            try:
                s.send(r, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as e:  # noqa: BLE001 - e.g. a request cancelled meanwhile
                print(f"[fused] could not send a response: {e}", flush=True)

    def _run_sync(self, requests) -> List:
        """The whole pipeline for a group, in this thread -> its responses."""
        out: List = [None] * len(requests)
        batch = self._prepare(requests, out)
        if batch is not None:
            self._device_stage(batch)
            self._back(batch)
        return out

    # -- checks and the device stage: fbank, encoder ----------------------------------------
    def _prepare(self, requests, out: List) -> "_FusedBatch | None":
        """Checks (bad requests get their error in `out`) and the host half of fbank: the
        samples staged for the GPU fbank, or the CPU fbank -> the batch (None: no valid
        request). Needs no GPU lock."""
        self.timer.begin()
        t = time.perf_counter()
        # with the GPU fbank the samples' range is checked as they are staged (one pass)
        wavs, counts = self.front.check(requests, out, defer_range=self.gpu_fbank)
        t = self.timer.split("check", t)
        if not wavs:
            return None
        if self.gpu_fbank:  # samples into a pinned buffer; under the lock the GPU work is only queued
            tf = self.front.torch_fbank
            staged = tf.stage(wavs, check_range=True, pool=self.stage_pool)
            if staged.bad:  # rows outside [-1, 1]: errors for their requests, or int16 scaled
                tf.unstage(staged)
                wavs, counts = self.front.recheck(requests, out, wavs, counts, staged.bad)
                if not wavs:
                    return None
                staged = tf.stage(wavs, pool=self.stage_pool)
            self.timer.split("stage", t)
            return _FusedBatch(requests, counts, out, staged.frames, staged=staged)
        fs = self.front.fbank_batch(wavs)
        feats, lens = _cat_padded([f[None] for f in fs], axis=1), np.array([f.shape[0] for f in fs], np.int32)
        self.timer.split("fbank", t)
        return _FusedBatch(requests, counts, out, lens.tolist(), feats=feats, lens=lens)

    def _device_stage(self, batch: _FusedBatch):
        """fbank (GPU) + encoder for a prepared batch; its outputs into the batch."""
        self.timer.begin()
        t = time.perf_counter()
        with self.gpu_lock:
            t = self.timer.split("device_wait", t)
            feats, lens = batch.feats, batch.lens
            if batch.staged is not None:  # batched torch fbank on the engine's GPU
                feats, lens = self.front.torch_fbank.batch_tensor(batch.staged)
                t = self.timer.split("fbank", t)
            batch.staged = batch.feats = batch.lens = None
            batch.host, batch.enc, batch.enc_lens = self._encode(feats, lens, batch.frames)
            del feats, lens  # GPU memory is freed under the lock (no other thread's graph capture)
        self.timer.split("encode", t)
        if self.on_device:
            batch.out_frames = np.array([self.engine.fm.out_frames(k) for k in batch.frames], np.int64)

    def _encode(self, feats, lens, frames):
        """-> (host outputs for the search, encoder_out, encoder_out_lens for rescoring).
        On the GPU with the GPU search nothing here waits for the device (frames: the
        frame counts on the host size the outputs)."""
        if not self.on_device:
            enc = self.engine.encode(feats, lens)
            return enc, enc["encoder_out"], enc["encoder_out_lens"]
        import torch

        dev = self.engine.device
        if isinstance(feats, np.ndarray):
            feats = torch.from_numpy(np.ascontiguousarray(feats)).to(dev)
            lens = torch.from_numpy(lens.astype(np.int32)).to(dev)
        out, out_lens, _, topv, topi = self.engine.encode_tensors(feats, lens, host_lens=frames)
        if self.gpu_search is not None:  # the n-best stays on the GPU
            found, done = self._launch_search(topv, topi, out_lens)
            host = {"search": found, "search_done": done}
        else:
            host = {"encoder_out_lens": out_lens.cpu().numpy(), "beam_log_probs": topv.float().cpu().numpy(),
                    "beam_log_probs_idx": topi.cpu().numpy()}
        # the CUDA graph's output buffers are reused by the next batch of this bucket: copy
        return host, out.clone(), out_lens.clone()

    def _launch_search(self, topv, topi, out_lens):
        """Queue the GPU search of a batch on `search_stream` after the encoder's work (caller
        holds gpu_lock) -> (its SearchOutput, an event recorded after it). Its inputs are
        copies (the encoder graph's buffers serve the next batch) whose memory the allocator
        keeps until the search stream is past them."""
        import torch

        s, side = self.settings, self.search_stream
        inputs = (topv.to(torch.float32, copy=True), topi.clone(), out_lens.clone())
        side.wait_stream(torch.cuda.current_stream(side.device))
        with torch.cuda.stream(side):
            found = self.gpu_search.ctc_search(*inputs, s.beam_size, s.blank, self.gpu_lm, self.lm_weight,
                                               self.length_bonus)
            found.copy_lengths_to_host()  # the packing sizes its tensors from these (no sync)
            done = torch.cuda.Event(blocking=self.blocking_waits)
            done.record(side)
        for t in inputs:
            t.record_stream(side)
        return found, done

    # -- host stage: search, rescoring, text -------------------------------------------------
    def _back(self, batch: _FusedBatch):
        if "search" in batch.host:
            return self._back_gpu(batch)
        s, beam = self.settings, self.settings.beam_size
        lens = batch.host["encoder_out_lens"].reshape(-1)
        n = len(lens)
        t = time.perf_counter()
        nbest = self._search(batch.host["beam_log_probs"], batch.host["beam_log_probs_idx"], lens)
        t = self.timer.split("search", t)
        best = [0] * n
        if self.rescoring:
            for i in range(0, n, self.chunk):  # the decoder's max batch each
                j = min(n, i + self.chunk)
                frames = int(lens[i:j].max())
                packed = rescoring_inputs(nbest[i:j], beam, s.sos, s.eos)
                t = self.timer.split("pack", t)
                with self.gpu_lock:
                    t = self.timer.split("rescore_wait", t)
                    picked, scores = self._rescore(batch.enc, batch.enc_lens, i, j, frames, packed)
                t = self.timer.split("rescore", t)
                best[i:j] = [pick_rescored(h, sc, b, self.lm_rescore_weight)
                             for h, sc, b in zip(nbest[i:j], scores, picked)]
        self._release(batch)
        self._respond(batch, [hyps[b][0] if b < len(hyps) else () for hyps, b in zip(nbest, best)])
        self.timer.split("responses", t)

    def _back_gpu(self, batch: _FusedBatch):
        """The batch's n-best is on the GPU (search_device gpu): decoder inputs packed, the
        attention decoder and the pick there too; only the winners' token ids come back.
        This thread waits for the search and for the ids outside gpu_lock: under it, the
        work is only queued (lengths come from the host copies), so the other threads'
        batches queue theirs meanwhile."""
        import torch

        gs, s = self.gpu_search, self.settings
        found = batch.host["search"]
        n = found.count.shape[0]
        t = time.perf_counter()
        batch.host["search_done"].synchronize()  # the search's stream only
        t = self.timer.split("search_wait", t)
        with self.gpu_lock:
            t = self.timer.split("rescore_wait", t)
            cur = torch.cuda.current_stream(self.search_stream.device)
            cur.wait_event(batch.host["search_done"])
            part = None
            if self.rescoring:
                picks = []
                for i in range(0, n, self.chunk):  # the decoder's max batch each
                    j = min(n, i + self.chunk)
                    part = found.rows(i, j)
                    frames = int(batch.out_frames[i:j].max())
                    best, score = self.engine.rescore_tensors(
                        batch.enc[i:j, :frames], batch.enc_lens[i:j],
                        *gs.rescoring_tensors(part, s.beam_size, s.sos, s.eos))
                    picks.append(gs.pick_rescored(part, score, best, self.lm_rescore_weight))
                index = torch.cat(picks)
            else:
                index = torch.zeros(n, dtype=torch.int64, device=found.count.device)
            fetch = gs.fetch_best_tokens(found, index, blocking=self.blocking_waits)
            # the n-best (the search stream's memory) is read by work queued here: the
            # allocator must not hand it to the next search before this stream is past it
            for x in (found.tokens, found.lens, found.ctc, found.count, found.lm):
                if x is not None:
                    x.record_stream(cur)
            batch.enc = batch.enc_lens = batch.host = found = part = None  # freed under the lock
        t = self.timer.split("rescore", t)
        ids = fetch.lists()
        t = self.timer.split("ids_wait", t)
        self._respond(batch, ids)
        self.timer.split("responses", t)

    def _respond(self, batch: _FusedBatch, ids: List):
        """One TRANSCRIPTS response per request with utterances (ids: token ids per utterance)."""
        k = 0
        for r, count in enumerate(batch.counts):
            if count == 0:
                continue
            texts = [[self.vocab.text(ids[k + q]).encode("utf-8")] for q in range(count)]
            k += count
            batch.out[r] = pb_utils.InferenceResponse([
                pb_utils.Tensor("TRANSCRIPTS", np.array(texts, dtype=np.object_))])

    def _release(self, batch: _FusedBatch):
        """Drop the batch's encoder output; on a GPU under the lock, so that its memory is
        not freed while another thread captures a CUDA graph."""
        if batch.enc is None:
            return
        if self.on_device:
            with self.gpu_lock:
                batch.enc = batch.enc_lens = batch.host = None
        batch.enc = batch.enc_lens = batch.host = None

    def _search(self, topv, topi, lens) -> List:
        """n-best lists of the batch, split over the search threads (C++ frees the GIL)."""
        s = self.settings
        n = len(lens)
        parts = min(self.search_threads, max(1, n // self.min_search_chunk))
        run = lambda a, b: ctc_prefix_beam_search_batch(  # noqa: E731
            topv[a:b], topi[a:b], lens[a:b], s.beam_size, s.blank, self.lm, self.lm_weight,
            self.length_bonus)
        if parts <= 1 or self.search_pool is None:
            return run(0, n)
        bounds = np.linspace(0, n, parts + 1).round().astype(int).tolist()
        futures = [self.search_pool.submit(run, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        return [h for f in futures for h in f.result()]

    def _rescore(self, enc, enc_lens, i: int, j: int, t: int, packed):
        """Attention rescoring of rows i:j (encoder frames :t) -> (best_index list, score (B, beam))."""
        pad, hl, rpad, ctc = packed
        if not self.on_device:
            best, score = self.engine.rescore(np.ascontiguousarray(enc[i:j, :t]), enc_lens[i:j],
                                              pad, hl, rpad, ctc)
            return np.asarray(best).reshape(-1).tolist(), score
        import torch

        dev = self.engine.device
        t_ = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dt)  # noqa: E731
        best, score = self.engine.rescore_tensors(
            enc[i:j, :t], enc_lens[i:j], t_(pad, torch.int64), t_(hl, torch.int32),
            t_(rpad, torch.int64), t_(ctc, torch.float32))
        return best.cpu().reshape(-1).tolist(), score.float().cpu().numpy()

    def finalize(self):
        self.timer.close()
        for pool in (self.batch_pool, self.search_pool, self.stage_pool):
            if pool is not None:
                pool.shutdown(wait=True)
