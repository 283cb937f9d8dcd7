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
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np

from wenet_triton.audio.frontend import AudioError, check_waveform, min_samples
from wenet_triton.audio.streaming import StreamingFeatures, window_bounds
from wenet_triton.contract import FbankConf
from wenet_triton.decode.search import ctc_greedy
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines.base import Engine
from wenet_triton.engines.streaming import ChunkRunner, encode_chunked, open_chunk_runner
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
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
    into engine_dir), search and rescoring with `engine`."""
    settings = engine.settings
    model = getattr(engine, "model", None)
    if not isinstance(model, ASRModel):
        model = ASRModel.from_spec(load_model_dir(model_dir or settings.source_model_dir))
    runner = open_chunk_runner(backend, model, chunk_size, left_chunks, settings.beam_size,
                               engine_dir, device, threads)
    return StreamingRecognizer(engine, Vocab.from_engine_dir(engine_dir, settings), runner,
                               decoding=decoding)
