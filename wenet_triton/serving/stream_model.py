"""The Triton `streaming` model: chunk-by-chunk recognition of live streams (sequence
batching, oldest strategy).

Each request is one chunk of one stream: `WAV` FP32 [1, n] (any n from 0 to the configured
maximum), `WAV_LENS` INT32 [1, 1], and the sequence controls Triton adds (START, END, READY,
CORRID). The model keeps each stream's state keyed by its correlation id (`LiveStream`:
fbank remainder, window buffer, encoder caches, accumulated encoder output and top-k
log-probs) and answers every chunk with `TRANSCRIPT` (the partial: best prefix of the CTC
prefix beam search over the frames so far; on END the attention-rescored final, through a
BLS call to the `decoder` model), `IS_FINAL` and `LIVE_STREAMS` (streams this instance holds
after the request). A dynamic batch runs one batched chunk-encoder step at a time over every
stream with a window ready (`StreamDecoder`).

Parameter async_responses=true (`streaming.async_responses`): execute() only reads the
batch's inputs, hands it to the instance's one decoding thread and returns, and the
responses go out through each request's response sender; Triton then moves the next batch
into the stub while this one decodes (batches stay in arrival order: one thread decodes
them). At most `max_inflight` batches are queued or decoding; beyond that execute() waits
and Triton's queue holds the requests, so batches grow under load.

Errors belong to one stream: a bad chunk (NaN/inf, |x| > 1, too long, wrong shape) is
refused with INVALID_ARGUMENT and not added (the stream goes on; on END the stream is
dropped); a chunk of a stream this instance does not hold (refused at START, expired, or
never started) is INVALID_ARGUMENT; a START beyond `max_streams` is UNAVAILABLE. A stream
with no chunk for `idle_seconds` is dropped (Triton frees its sequence slot at the same
age); nothing is kept for an ended stream.
"""
from __future__ import annotations

import json
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from wenet_triton.contract import EngineSettings, in_unit_range
from wenet_triton.decode.options import Decoding, load_lm
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines.streaming import (
    STREAMING_ONNX_NAME,
    ChunkRunner,
    CudaChunkBackend,
    DeviceChunkRunner,
    OnnxChunkBackend,
    TorchChunkBackend,
)
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import streaming_settings
from wenet_triton.serving.triton_models import (
    _inputs,
    _params,
    _request_name,
    _tensor,
    _Timings,
    _version_dir,
    check_amplitude,
    pb_utils,
    settles_heap,
)
from wenet_triton.streaming import LiveStream, StreamDecoder


class StreamError(Exception):
    """A request's own error: code 'INVALID_ARG' (the client's fault), 'UNAVAILABLE' (retry
    later) or 'INTERNAL'."""
    def __init__(self, msg: str, code: str = "INVALID_ARG"):
        super().__init__(msg)
        self.code = code


@dataclass
class _Read:
    """A request's inputs as execute() read them: the sequence id and controls, and the chunk's
    samples (a copy, owned by the model) or why they were refused; name: the request's id for
    messages."""
    cid: int
    start: bool
    end: bool
    wav: Union[np.ndarray, StreamError]
    name: str


# IS_FINAL's two values, shared by every response
_IS_FINAL = {False: np.array([[False]], dtype=bool), True: np.array([[True]], dtype=bool)}


def _error_response(msg: str, code: str):
    c = getattr(pb_utils.TritonError, code, None)
    err = pb_utils.TritonError(msg, c) if c is not None else pb_utils.TritonError(msg)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def _first(tensors: Dict, name: str):
    """The first value of input `name` as a Python scalar, or None (absent or empty)."""
    t = tensors.get(name)
    if t is None:
        return None
    v = t.as_numpy()
    return v.item(0) if v.size else None


def _flag(tensors: Dict, name: str) -> bool:
    v = _first(tensors, name)
    return bool(v is not None and int(v))


def _corrid(request, tensors: Dict) -> int:
    v = _first(tensors, "CORRID")
    if v is not None:
        return int(v)
    try:
        return int(request.correlation_id())
    except Exception:  # noqa: BLE001 - no id at all
        return 0


class _BlsRescorer:
    """The engines' rescore() over a BLS call to the `decoder` model (its max batch each)."""
    def __init__(self, model: str, max_batch: int, reverse: bool):
        self.model, self.max_batch, self.reverse = model, max(1, max_batch), reverse

    def rescore(self, enc, enc_lens, pad, lens, rpad, ctc):
        best, scores = [], []
        for i in range(0, len(enc), self.max_batch):
            j = i + self.max_batch
            t = int(enc_lens[i:j].max())
            inputs = [_tensor("encoder_out", np.ascontiguousarray(enc[i:j, :t])),
                      _tensor("encoder_out_lens", enc_lens[i:j].reshape(-1, 1).astype(np.int32)),
                      _tensor("hyps_pad_sos_eos", pad[i:j]), _tensor("hyps_lens_sos", lens[i:j]),
                      _tensor("ctc_score", ctc[i:j])]
            if self.reverse:
                inputs.append(_tensor("r_hyps_pad_sos_eos", rpad[i:j]))
            resp = pb_utils.InferenceRequest(model_name=self.model, inputs=inputs,
                                             requested_output_names=["best_index", "score"]).exec()
            if resp.has_error():
                raise RuntimeError(f"decoder: {resp.error().message()}")
            get = lambda n: pb_utils.get_output_tensor_by_name(resp, n).as_numpy()  # noqa: E731
            best += get("best_index").reshape(-1).tolist()
            scores.append(get("score"))
        return best, np.concatenate(scores)


@settles_heap
class Streaming:
    def initialize(self, args):
        p = _params(args)
        vdir = _version_dir(args)
        self.settings = EngineSettings.load(vdir)
        self.vocab = Vocab.from_engine_dir(vdir, self.settings)
        self.rate = self.settings.fbank.sample_rate
        self.max_streams = int(p.get("max_streams", "64"))
        self.idle = float(p.get("idle_seconds", "30"))
        self.max_chunk = int(float(p.get("max_chunk_seconds", "2")) * self.rate)
        self.int16_range = p.get("accept_int16_range", "false").lower() == "true"
        decoding, lm = Decoding(beam_size=self.settings.beam_size), None
        if p.get("lm_file"):
            lm = load_lm(os.path.join(vdir, p["lm_file"]), self.vocab.tokens)
            decoding.lm_weight = float(p.get("lm_weight", "0.5"))
            decoding.lm_rescore_weight = float(p.get("lm_rescore_weight", "0.5"))
            decoding.length_bonus = float(p.get("length_bonus", "0"))
        # feature_device "cuda": the chunk encoder's GPU (this instance's)
        fe_device = self._device(args, p) if p.get("feature_device") == "cuda" else "cpu"
        self.decoder = StreamDecoder(self._runner(args, p, vdir), self.vocab, self.settings,
                                     self.settings.fbank, decoding, lm,
                                     fbank_impl=p.get("fbank", "knf"), feature_device=fe_device,
                                     search_threads=int(p.get("search_threads", "1")))
        self.rescorer = self._rescorer(args, p, vdir)
        self.streams: Dict[int, LiveStream] = {}
        self._oldest = float("-inf")  # a lower bound of the streams' last_seen (see _sweep)
        self.counts = {"opened": 0, "ended": 0, "expired": 0, "refused": 0, "dropped": 0}
        self.lock = threading.Lock()
        self.async_responses = p.get("async_responses", "false").lower() == "true"
        self.slots = threading.BoundedSemaphore(max(1, int(p.get("max_inflight", "2"))))
        # one thread decodes the batches in the order Triton gave them (a stream's chunks in order)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="streams") if self.async_responses else None
        # WENET_TRITON_PROFILE=N: wall / CPU ms per batch of the stages of execute() and the
        # gap between batches (Triton gathering the next one)
        self.timer, self._last_end = _Timings("streaming", unit="chunks"), 0.0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True, name="stream-idle")
        self._sweeper.start()
        print(f"[streaming] chunk {self.decoder.runner.settings['decoding_chunk_size']}, left chunks "
              f"{self.decoder.runner.settings['num_decoding_left_chunks']}, up to {self.max_streams} "
              f"streams, idle {self.idle:g} s", flush=True)

    def _runner(self, args, p, vdir) -> ChunkRunner:
        chunk, left = int(p["chunk_size"]), int(p["left_chunks"])
        if p.get("engine", "onnxruntime") == "onnxruntime":
            return ChunkRunner(OnnxChunkBackend(os.path.join(vdir, STREAMING_ONNX_NAME),
                                                threads=int(p.get("threads", "0"))))
        device = self._device(args, p)
        if device == "cpu" and int(p.get("threads", "0")):
            torch.set_num_threads(int(p["threads"]))
        model = ASRModel.from_spec(load_model_dir(os.path.join(vdir, "model")))
        settings = streaming_settings(model, chunk, left, self.settings.beam_size)
        if p.get("engine") == "torch_cuda":  # GPU engine, the streams' caches on the device
            if not int(p.get("threads", "0")):
                torch.set_num_threads(2)  # the GPU computes; torch's CPU pool only competes
            # the slot pools sized for max_streams now: growing them mid-load re-captured
            # the graphs while streams waited
            backend = CudaChunkBackend(model, settings, device, p.get("dtype") or None,
                                       slots=self.max_streams)
            # one CUDA graph per batch bucket up to the model's max batch
            backend.warmup(int(json.loads(args.get("model_config", "{}")).get("max_batch_size", 16)))
            return DeviceChunkRunner(backend)
        return ChunkRunner(TorchChunkBackend(model, settings, device))

    def _rescorer(self, args, p, vdir):
        """Attention rescoring of final transcripts: `local` = the decoder in this instance
        (the GPU engine on a GPU, no BLS hop on the chunk path), else a BLS call to the shared
        `decoder` model."""
        if p.get("rescore", "bls") != "local":
            return _BlsRescorer(p.get("decoder_model", "decoder"),
                                int(p.get("decoder_max_batch_size", "16")),
                                self.settings.decoder_has_reverse_input)
        from wenet_triton.engines.cuda import CudaEngine
        from wenet_triton.engines.torch_engine import TorchEngine
        model = ASRModel.from_spec(load_model_dir(os.path.join(vdir, "model")))
        device = self._device(args, p)
        if device.startswith("cuda"):
            # the finals' shapes (ended streams x frames x hypothesis length) vary without
            # end: CUDA graphs over coarse buckets (a capture stalls every stream of the
            # instance: the likely buckets are captured here, rescore_warmup_seconds; eager,
            # the decoder's launches cost ~7 ms of each batch with a final, H200 2026-12-02),
            # or eager with rescore_graphs false; no cuDNN attention plan per new shape either
            graphs = p.get("rescore_graphs", "true").lower() == "true"
            engine = CudaEngine(model, self.settings, device, p.get("dtype") or "float16",
                                cuda_graphs=graphs, decoder_cudnn=False, coarse_decoder_buckets=True)
            seconds = float(p.get("rescore_warmup_seconds", "0"))
            if graphs and seconds > 0:  # the likely buckets' graphs now, not at a live final
                frames = int(seconds * 1000 / self.settings.fbank.frame_shift_ms)  # fbank frames
                shapes = engine.coarse_rescore_shapes(engine.fm.out_frames(frames))
                n, took = engine.warm_rescore(shapes, budget_s=max(10.0, 2 * seconds))
                print(f"[streaming] finals' decoder: {n} of {len(shapes)} CUDA graphs (finals up to "
                      f"{seconds:g} s) captured at load in {took:.1f} s", flush=True)
            return engine
        return TorchEngine(model, self.settings, "cpu", None)

    @staticmethod
    def _device(args, p) -> str:
        if p.get("device", "cpu").startswith("cuda") or args.get("model_instance_kind") == "GPU":
            return f"cuda:{args.get('model_instance_device_id', '0')}"
        return "cpu"

    # -- state ------------------------------------------------------------------------------
    def _sweep(self):
        """Drop streams idle for longer than idle_seconds (lock held). `_oldest` is at most
        every live stream's last_seen (the oldest one's at the last scan; streams only get
        later ones), so while it is younger than idle_seconds no stream is, and the scan
        of every stream is skipped."""
        now = time.monotonic()
        if now - self._oldest <= self.idle:
            return
        old = [c for c, s in self.streams.items() if now - s.last_seen > self.idle]
        for c in old:
            del self.streams[c]
        self._oldest = min((s.last_seen for s in self.streams.values()), default=now)
        if old:
            self.counts["expired"] += len(old)
            print(f"[streaming] dropped {len(old)} idle stream(s) ({self.idle:g} s without a chunk): "
                  f"{', '.join(map(str, old[:8]))}; {len(self.streams)} live", flush=True)

    def _sweep_loop(self):
        while not self._stop.wait(min(1.0, max(0.05, self.idle / 4))):
            with self.lock:
                self._sweep()

    # -- requests ---------------------------------------------------------------------------
    def _chunk(self, tensors: Dict) -> np.ndarray:
        wav, lens = tensors.get("WAV"), tensors.get("WAV_LENS")
        if wav is None or lens is None:
            raise StreamError("a chunk needs WAV and WAV_LENS")
        wav, lens = wav.as_numpy(), lens.as_numpy()
        if wav.ndim != 2 or wav.shape[0] != 1 or lens.size != 1:
            raise StreamError(f"WAV must be [1, samples] (one chunk of one stream), got shape "
                              f"{list(wav.shape)} with WAV_LENS of {lens.size} values")
        n = int(lens.item(0))
        if n < 0 or n > wav.shape[1]:
            raise StreamError(f"WAV_LENS {n} outside 0..{wav.shape[1]} (the WAV length)")
        if max(n, wav.shape[1]) > self.max_chunk:
            raise StreamError(f"chunk of {max(n, wav.shape[1])} samples is longer than the configured "
                              f"maximum of {self.max_chunk} ({self.max_chunk / self.rate:g} s, "
                              "streaming.max_chunk_seconds): send shorter chunks")
        # decoded after execute() returns (async_responses): a copy, not a view of the request's memory
        w = wav[0, :n].astype(np.float32, copy=self.async_responses)
        if not n or in_unit_range(w):  # else the checks that name the problem
            return w
        if not np.all(np.isfinite(w)):
            raise StreamError("WAV: chunk contains NaN or inf")
        try:
            return check_amplitude(w, self.int16_range)
        except ValueError as e:
            raise StreamError(str(e)) from e

    def execute(self, requests):
        if self.worker is None:
            return self._decode(self._read_all(requests))
        t = time.perf_counter()
        reads = self._read_all(requests)  # the inputs, on Triton's thread
        senders = [r.get_response_sender() for r in requests]
        self.slots.acquire()  # beyond max_inflight batches: wait here, Triton queues
        self.worker.submit(self._answer, reads, senders, t)
        return None

    def _answer(self, reads: List[_Read], senders, t_submit: float):
        """The decoding thread: decode a batch and send its responses."""
        try:
            self.timer.begin()
            self.timer.add("queue", time.perf_counter() - t_submit)
            try:
                out = self._decode(reads)
            except Exception as e:  # noqa: BLE001 - never leave a request unanswered
                print(f"[streaming] batch failed:\n{traceback.format_exc(limit=6)}", flush=True)
                out = [_error_response(f"stream {r.cid}{r.name}: {e}", "INTERNAL") for r in reads]
            for sender, r in zip(senders, out):
                try:
                    sender.send(r, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                except Exception as e:  # noqa: BLE001 - e.g. a request cancelled meanwhile
                    print(f"[streaming] could not send a response: {e}", flush=True)
        finally:
            self.slots.release()

    def _read_all(self, requests) -> List[_Read]:
        out = []
        for req in requests:
            tensors = _inputs(req)
            try:
                wav = self._chunk(tensors)
            except StreamError as e:
                wav = e
            out.append(_Read(_corrid(req, tensors), _flag(tensors, "START"), _flag(tensors, "END"),
                             wav, _request_name(req)))
        return out

    def _decode(self, reads: List[_Read]) -> List:
        """Admit and decode one batch -> its responses, in order."""
        t = time.perf_counter()
        self.timer.begin()
        if self._last_end:
            self.timer.add("between", t - self._last_end)
        out: List = [None] * len(reads)
        items, owners = [], []  # (stream, wav, last) and (request index, corrid, last)
        with self.lock:
            self._sweep()
            ended = set()
            for i, r in enumerate(reads):
                try:
                    item = self._admit(r, ended)
                except StreamError as e:
                    out[i] = _error_response(f"stream {r.cid}{r.name}: {e}", e.code)
                    continue
                items.append(item)
                owners.append((i, r.cid, item[2]))
            t = self.timer.split("admit", t)
            if items:
                t = self._run(reads, items, owners, out, t)
            live = len(self.streams)
        # shared by this batch's responses (the outputs are copied out when they are sent)
        live_streams, final = np.array([[live]], dtype=np.int32), _IS_FINAL
        for i, r in enumerate(out):
            if isinstance(r, tuple):
                text, last = r
                out[i] = pb_utils.InferenceResponse([
                    pb_utils.Tensor("TRANSCRIPT", np.array([[text.encode("utf-8")]], dtype=np.object_)),
                    _tensor("IS_FINAL", final[last]), _tensor("LIVE_STREAMS", live_streams)])
        self.timer.split("responses", t)
        self._last_end = time.perf_counter()
        self.timer.done(len(items), 1)
        return out

    def _admit(self, r: _Read, ended: set):
        """(stream, samples, last) for a request, opening the stream on START; StreamError
        when the request is refused (the stream's state is left as it was, except that a
        refused END chunk drops the stream: Triton has ended the sequence)."""
        cid, start, end = r.cid, r.start, r.end
        if cid == 0:
            raise StreamError("no sequence id: send chunks with a non-zero sequence_id")
        if start:
            if cid in self.streams:  # a new sequence on a live id replaces the old one
                del self.streams[cid]
                self.counts["dropped"] += 1
            elif len(self.streams) >= self.max_streams:
                self.counts["refused"] += 1
                raise StreamError(f"too many streams: this instance holds {len(self.streams)}, the "
                                  f"most it takes is {self.max_streams} (streaming.max_streams); "
                                  "retry later", "UNAVAILABLE")
            self.streams[cid] = self.decoder.open()
            self.counts["opened"] += 1
            ended.discard(cid)
        stream = self.streams.get(cid)
        if stream is None or cid in ended:
            raise StreamError("unknown stream: no START seen for this sequence id, or it ended, was "
                              f"refused or was idle for more than {self.idle:g} s")
        stream.last_seen = time.monotonic()
        try:
            if isinstance(r.wav, StreamError):
                raise r.wav
            wav = r.wav
        except StreamError as e:
            if end:
                self._drop(cid, stream)
                raise StreamError(f"{e}; the stream ended without a final transcript") from e
            raise StreamError(f"{e}; chunk not added, the stream goes on") from e
        if end:
            ended.add(cid)
        return stream, wav, end

    def _drop(self, cid: int, stream: Optional[LiveStream]):
        if self.streams.get(cid) is stream:
            del self.streams[cid]

    def _run(self, reads: List[_Read], items, owners, out, t: float) -> float:
        """Decode a batch of admitted chunks; -> the end of its last profiled stage (t: its start)."""
        mark = [t]  # the profile's stages inside advance(): fbank, encode, search

        def split(stage: str):
            mark[0] = self.timer.split(stage, mark[0])
        try:
            results = self.decoder.advance(items, split if self.timer.every else None)
        except Exception as e:  # noqa: BLE001 - the streams' state is unknown now: drop them
            print(f"[streaming] batch of {len(items)} chunks failed:\n{traceback.format_exc(limit=6)}",
                  flush=True)
            for (stream, _, _), (i, cid, _) in zip(items, owners):
                self._drop(cid, stream)
                self.counts["dropped"] += 1
                out[i] = _error_response(f"stream {cid}{reads[i].name}: decoding "
                                         f"failed ({e}); the stream was dropped", "INTERNAL")
            return self.timer.split("texts", mark[0])
        t = self.timer.split("texts", mark[0])
        finals = [k for k, (_, _, last) in enumerate(items) if last]
        texts = {}
        if finals:
            try:
                got = self.decoder.finish([(items[k][0], results[k].nbest) for k in finals],
                                          self.rescorer)
                texts = dict(zip(finals, got))
            except Exception as e:  # noqa: BLE001 - those streams end with an error
                print(f"[streaming] rescoring failed:\n{traceback.format_exc(limit=6)}", flush=True)
                for k in finals:
                    i, cid, _ = owners[k]
                    out[i] = _error_response(f"stream {cid}{reads[i].name}: attention "
                                             f"rescoring failed ({e})", "INTERNAL")
            t = self.timer.split("rescore", t)
        for k, ((stream, _, last), (i, cid, _)) in enumerate(zip(items, owners)):
            if last:
                self._drop(cid, stream)
                self.counts["ended"] += 1
                if out[i] is None:
                    out[i] = (texts.get(k, ""), True)
            else:
                out[i] = (results[k].text, False)
        return t

    def finalize(self):
        self._stop.set()
        self.timer.close()
        if self.worker is not None:  # the batches handed over are answered first
            self.worker.shutdown(wait=True)
        with self.lock:
            n = len(self.streams)
            self.streams.clear()
        print(f"[streaming] stopped with {n} live streams; totals {self.counts}", flush=True)
