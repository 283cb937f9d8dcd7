"""Streaming (chunk-by-chunk) recognition with a causal U2 / U2++ encoder.

The model math is WeNet v2.2.1's `BaseEncoder.forward_chunk` / `forward_chunk_by_chunk`,
batched over streams like the streaming wrapper of WeNet's `export_onnx_gpu.py`:

- fbank frames go to the encoder in windows of `(chunk - 1) * subsampling + right_context
  + 1` frames, stride `chunk * subsampling` (consecutive windows overlap by
  `right_context + 1 - subsampling` frames, so the subsampling convs see what they would
  see on the whole utterance); the last window may be shorter (at least `right_context + 1`);
- CMVN and subsampling run on each window; each encoder layer attends to its attention cache
  (keys/values of up to `left_chunks * chunk` earlier frames, all of them with
  `left_chunks = -1`) plus the chunk itself, and its causal conv continues from the last
  `cnn_module_kernel - 1` frames of the previous chunk;
- positional encodings are those of the frames' absolute positions (the stream's offset).

Pieces, bottom up:
- `StreamingFbank` / `FrameWindower` / `StreamingFeatures`: waveform pieces -> fbank frames
  equal to whole-utterance fbank -> encoder windows.
- `ChunkEncoder`: one chunk step of many streams at different offsets (WeNet's GPU streaming
  I/O, `STREAMING_ENCODER_INPUTS/OUTPUTS` in export.py); it is what `export_chunk_encoder`
  writes to ONNX, and the `torch` backend runs it directly.
- `EncoderState`, `ChunkRunner`: per-stream state and one batched step over any streams.
- `encode_chunked` (WeNet's `forward_chunk_by_chunk` for a batch of utterances, in
  lockstep), `StreamingRecognizer` (WeNet's `simulate_streaming=True` decoding: CTC prefix
  beam search over the chunked encoder output, attention rescoring on all of it).
- `StreamDecoder` / `LiveStream`: the same decoding for live streams that send audio in
  pieces of any size at their own pace (what the Triton `streaming` model runs): one batched
  chunk step over every stream with a window ready, the partial (best prefix of the search
  over the frames so far) after each piece, attention rescoring at the end.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from wenet_triton.audio.frontend import AudioError, check_waveform, min_samples
from wenet_triton.audio.streaming import FrameFbank, StreamingFeatures, accept_many, window_bounds
from wenet_triton.contract import FbankConf
from wenet_triton.decode.native import resolve_threads
from wenet_triton.decode.search import IncrementalSearch, advance_search_batch, ctc_greedy
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines.base import Engine
from wenet_triton.engines.cuda import CudaEngine
from wenet_triton.engines.streaming import (
    ChunkRunner,
    CudaChunkBackend,
    DeviceChunkRunner,
    EncoderState,
    encode_chunked,
    open_chunk_runner,
)
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import streaming_settings
from wenet_triton.pipeline import Recognizer, Result, rescore_batch, search_batch

log = logging.getLogger(__name__)


def feature_windows(feats: np.ndarray, settings: Dict) -> List[np.ndarray]:
    """Whole-utterance fbank (T, feat) -> its encoder windows."""
    return [feats[a:b] for a, b in window_bounds(len(feats), settings["decoding_chunk_size"],
                                                  settings["subsampling_rate"],
                                                  settings["right_context"])]


class StreamingRecognizer(Recognizer):
    """WeNet's `simulate_streaming=True` decoding: the chunked encoder (caches, finite or
    unlimited left context), CTC prefix beam search (with the LM if any) over its output, then
    attention rescoring on the whole chunked encoder output with `engine`'s decoder."""

    def __init__(self, engine: Engine, vocab: Vocab, runner: ChunkRunner,
                 fbank_conf: Optional[FbankConf] = None, decoding=None,
                 piece_seconds: float = 0.1):
        super().__init__(engine, vocab, fbank_conf, decoding)
        if runner.settings["beam_size"] != self.settings.beam_size:
            raise ValueError(f"chunk encoder top-k {runner.settings['beam_size']} != the "
                             f"export's beam {self.settings.beam_size}")
        self.runner = runner
        self.piece = max(1, int(piece_seconds * self.fbank.conf.sample_rate))

    def _recognize_feats(self, feats: Sequence[np.ndarray]) -> List[Result]:
        return self.recognize_windows([feature_windows(f, self.runner.settings) for f in feats])

    def recognize_windows(self, windows: Sequence[Sequence[np.ndarray]]) -> List[Result]:
        """Each utterance as its list of encoder windows (empty: no encoder frame)."""
        keep = [i for i, w in enumerate(windows) if len(w)]
        out = [Result([], "", 0.0) for _ in windows]
        if not keep:
            return out
        enc = encode_chunked(self.runner, [windows[i] for i in keep])
        d = self.decoding
        nbest = search_batch(enc, d.beam_size, self.settings.blank, self.lm, d.lm_weight,
                             d.length_bonus)
        rescored = rescore_batch(self.engine, enc, nbest, self.settings,
                                 d.lm_rescore_weight if self.lm else 0.0)
        for b, (ids, score) in enumerate(rescored):
            greedy = ctc_greedy(enc["beam_log_probs_idx"][b], int(enc["encoder_out_lens"][b]))
            out[keep[b]] = Result(ids, self.vocab.text(ids), score, greedy, nbest[b])
        return out

    def recognize(self, wavs: Sequence[np.ndarray]) -> List[Result]:
        """From waveforms through the streaming front end, fed `piece_seconds` at a time."""
        windows = []
        for w in wavs:
            w = check_waveform(w)
            if len(w) < min_samples(self.fbank.conf):
                raise AudioError(f"audio of {len(w)} samples is shorter than one "
                                 f"{self.fbank.conf.frame_length_ms:g} ms frame")
            feats = StreamingFeatures(self.runner.settings, self.fbank.conf)
            ws = []
            for i in range(0, len(w), self.piece):
                ws += feats.accept(w[i:i + self.piece])
            windows.append(ws + feats.finish())
        return self.recognize_windows(windows)


def streaming_recognizer(engine: Engine, engine_dir: str, model_dir: Optional[str], backend: str,
                         chunk_size: int, left_chunks: int = -1, decoding=None,
                         device: str = "cpu", threads: int = 0) -> StreamingRecognizer:
    """The chunk-by-chunk recognizer of `wenet-triton transcribe --chunk-size`: the chunk
    encoder on `backend` (torch: the engine's own PyTorch model; onnxruntime: exported once
    into engine_dir; torch_cuda: the GPU engine's chunk forward on the engine's GPU and dtype
    sharing its weights, or, with unlimited left chunks (-1), which it does not do, the
    PyTorch chunk encoder in float32 on that GPU), search and rescoring with `engine`."""
    settings = engine.settings
    model = getattr(engine, "model", None)
    if not isinstance(model, ASRModel):
        model = ASRModel.from_spec(load_model_dir(model_dir or settings.source_model_dir))
    if backend == "torch_cuda" and isinstance(engine, CudaEngine):
        if left_chunks >= 0:
            runner = DeviceChunkRunner(CudaChunkBackend(
                model, streaming_settings(model, chunk_size, left_chunks, settings.beam_size),
                str(engine.device), fm=engine.fm))
            return StreamingRecognizer(engine, Vocab.from_engine_dir(engine_dir, settings), runner,
                                       decoding=decoding)
        backend, device = "torch", str(engine.device)
    runner = open_chunk_runner(backend, model, chunk_size, left_chunks, settings.beam_size,
                               engine_dir, device, threads)
    return StreamingRecognizer(engine, Vocab.from_engine_dir(engine_dir, settings), runner,
                               decoding=decoding)


@dataclass
class LiveStream:
    """One stream's state between pieces: the front end's remainder (fbank samples, frames of
    the next window), the encoder caches, the encoder output so far (for the rescoring), and
    the top-k log-probs of the frames its search has not been fed yet (`unsearched`: a chunk's search costs
    O(chunk), not O(stream))."""
    features: StreamingFeatures
    state: EncoderState
    pending: List[np.ndarray] = field(default_factory=list)  # windows not encoded yet
    windows: int = 0                 # windows produced so far (encoded or pending)
    frame_ends: List[int] = field(default_factory=lambda: [0])  # frames after k encoded windows
    chunk_out: List[np.ndarray] = field(default_factory=list)
    unsearched: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    finished: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    search: IncrementalSearch = field(default_factory=IncrementalSearch)  # over frames so far

    @property
    def frames(self) -> int:
        return self.frame_ends[-1]

    def encoder_output(self) -> np.ndarray:
        """The encoder output so far, (frames, D) (for rescoring at the end; the search takes
        only its new frames' top-k, `take_unsearched`)."""
        if len(self.chunk_out) > 1:  # keep one piece: a later concatenation copies less
            self.chunk_out = [np.concatenate(self.chunk_out)]
        return self.chunk_out[0]

    def take_unsearched(self, frames: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k (log-probs, ids) of the frames from the search's position up to `frames` (more
        than it has searched, at most `self.frames`), removed from `unsearched` (the caller
        feeds them to the search)."""
        need = frames - self.search.frames
        ps, xs = [], []
        while need > 0 and self.unsearched:
            p, x = self.unsearched[0]
            if len(p) <= need:
                self.unsearched.pop(0)
            else:
                self.unsearched[0] = (p[need:], x[need:])
                p, x = p[:need], x[:need]
            ps.append(p)
            xs.append(x)
            need -= len(p)
        if len(ps) == 1:
            return ps[0], xs[0]
        return np.concatenate(ps), np.concatenate(xs)


@dataclass
class PieceResult:
    """What one piece of a stream gives: the n-best of the search over the frames so far
    (the partial is its best prefix) and how many encoder frames that covered."""
    nbest: List
    frames: int
    text: str = ""


class StreamDecoder:
    """Live streams decoded chunk by chunk, each exactly as `StreamingRecognizer` decodes it
    alone: any number of streams, each at its own offset, sending pieces of any size.

    `advance` takes (stream, samples, last) items (a stream may appear more than once, in
    order), feeds the samples through each stream's front end, runs one batched chunk-encoder
    step at a time over every stream that has a window ready (streams at different offsets
    and cache fills share it) and returns for each item the CTC prefix beam search over its
    stream's frames up to that item (WeNet's simulate_streaming search, re-run over the
    accumulated top-k log-probs, with the LM if any). `finish` rescores ended streams with
    the attention decoder (any object with the engines' `rescore`).

    fbank_impl "knf" (default): kaldi-native-fbank per stream, on the CPU (bit-equal to the
    whole utterance's `Fbank`); "torch": every stream of an `advance` call cuts its frames and
    one batched torch fbank on `feature_device` ("cpu", "cuda:N") computes them all (within
    the torch-vs-knf fbank tolerance). search_threads: the resumed C++ searches of a batch
    split over that many threads (1: one call; 0: os.cpu_count(), at most 8; results
    identical)."""

    FBANK_IMPLS = ("knf", "torch")

    def __init__(self, runner: ChunkRunner, vocab: Vocab, settings, fbank_conf: FbankConf,
                 decoding=None, lm=None, fbank_impl: str = "knf", feature_device: str = "cpu",
                 search_threads: int = 1):
        self.runner, self.vocab, self.settings, self.fbank_conf = runner, vocab, settings, fbank_conf
        if fbank_impl not in self.FBANK_IMPLS:
            raise ValueError(f"fbank_impl {fbank_impl!r}: choose from {', '.join(self.FBANK_IMPLS)}")
        if fbank_impl == "knf" and feature_device != "cpu":
            raise ValueError(f"fbank_impl knf runs on the CPU, not {feature_device!r} (use torch)")
        self.fbank_impl, self.feature_device = fbank_impl, feature_device
        self.frame_fbank = FrameFbank(fbank_conf, feature_device) if fbank_impl == "torch" else None
        self.search_threads = resolve_threads(search_threads)
        self.beam = runner.settings["beam_size"]
        self.lm = lm
        self.lm_weight = decoding.lm_weight if (decoding is not None and lm is not None) else 0.0
        self.length_bonus = decoding.length_bonus if decoding is not None else 0.0
        self.lm_rescore_weight = decoding.lm_rescore_weight if (decoding is not None and lm is not None) else 0.0

    def open(self) -> LiveStream:
        return LiveStream(StreamingFeatures(self.runner.settings, self.fbank_conf, self.frame_fbank),
                          self.runner.initial_state())

    def advance(self, items: Sequence[Tuple[LiveStream, np.ndarray, bool]],
                split: Optional[Callable[[str], None]] = None) -> List[PieceResult]:
        """split: called with "fbank", "encode", "search" as each stage ends (a profile)."""
        split = split or (lambda stage: None)
        ending = set()
        for stream, _, last in items:  # refuse before any stream's state changes
            if stream.finished or id(stream) in ending:
                raise ValueError("the stream has ended")
            if last:
                ending.add(id(stream))
        marks = []
        now = time.monotonic()
        for (stream, _, last), windows in zip(items, accept_many([(s.features, w, last)
                                                                  for s, w, last in items])):
            stream.finished = stream.finished or last
            stream.pending += windows
            stream.windows += len(windows)
            stream.last_seen = now
            marks.append(stream.windows)
        split("fbank")
        self.encode_pending({id(s): s for s, _, _ in items}.values())
        split("encode")
        frames = [s.frame_ends[k] for (s, _, _), k in zip(items, marks)]
        nbest = self.search([(s, n) for (s, _, _), n in zip(items, frames)])
        split("search")
        return [PieceResult(nb, n, self.vocab.text(nb[0][0]) if nb and n else "")
                for nb, n in zip(nbest, frames)]

    def encode_pending(self, streams) -> int:
        """Batched chunk steps until no stream has a window pending; -> steps run."""
        streams = list(streams)
        steps = 0
        while True:
            ready = [s for s in streams if s.pending]
            if not ready:
                return steps
            outs, states = self.runner.step([s.pending[0] for s in ready], [s.state for s in ready])
            for s, o, st in zip(ready, outs, states):
                s.pending.pop(0)
                s.state = st
                s.chunk_out.append(o.chunk_out)
                s.unsearched.append((o.log_probs, o.log_probs_idx))
                s.frame_ends.append(s.frames + len(o.chunk_out))
            steps += 1

    def search(self, wanted: Sequence[Tuple[LiveStream, int]]) -> List[List]:
        """n-best of the prefix beam search over each stream's first `frames` frames (a
        stream's entries in order, non-decreasing). Each stream's search resumes where its
        previous chunk left it (`IncrementalSearch`): the same n-best as a search over all
        those frames at once, WeNet's simulate_streaming search."""
        out: List[List] = [[] for _ in wanted]
        todo = list(range(len(wanted)))
        while todo:  # one batched call per round: a stream's first pending entry each
            seen, now, later = set(), [], []
            for i in todo:
                (later if id(wanted[i][0]) in seen else now).append(i)
                seen.add(id(wanted[i][0]))
            chunks = []
            for i in now:
                s, n = wanted[i]
                if n <= s.search.frames:
                    chunks.append((np.zeros((0, self.beam), np.float32), np.zeros((0, self.beam), np.int64)))
                    continue
                chunks.append(s.take_unsearched(n))
            res = advance_search_batch([wanted[i][0].search for i in now], chunks, self.beam,
                                       self.settings.blank, self.lm, self.lm_weight, self.length_bonus,
                                       self.search_threads)
            for i, r in zip(now, res):
                out[i] = r
            todo = later
        return out

    def finish(self, ended: Sequence[Tuple[LiveStream, List]], rescorer) -> List[str]:
        """Attention-rescored text of each ended stream (its n-best over all its frames);
        rescorer: an object with the engines' rescore(...) (an engine, or a BLS call)."""
        texts = ["" for _ in ended]
        keep = [i for i, (s, nb) in enumerate(ended) if s.frames > 0 and nb]
        if not keep:
            return texts
        T = max(ended[i][0].frames for i in keep)
        enc = {"encoder_out": np.zeros((len(keep), T, self.runner.settings["output_size"]), np.float32),
               "encoder_out_lens": np.array([ended[i][0].frames for i in keep], np.int32)}
        for b, i in enumerate(keep):
            s = ended[i][0]
            enc["encoder_out"][b, :s.frames] = s.encoder_output()
        for b, (ids, _) in enumerate(rescore_batch(rescorer, enc, [ended[i][1] for i in keep],
                                                   self.settings, self.lm_rescore_weight)):
            texts[keep[b]] = self.vocab.text(ids)
        return texts
