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

import hashlib
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, FbankConf, ModelSpec, load_model_dir
from .engines import Engine
from .export import OPSET, STREAMING_ENCODER_OUTPUTS, streaming_encoder_io
from .frontend import AudioError, Fbank, check_waveform, min_samples
from .model import ASRModel, attention_bias
from .pipeline import Recognizer, Result, Vocab, rescore_batch, search_batch
from .search import ctc_greedy

log = logging.getLogger(__name__)

STREAMING_CONFIG_NAME = "streaming_encoder.json"
STREAMING_ONNX_NAME = "streaming_encoder.onnx"


# -- which models can stream ----------------------------------------------------------------
def check_streamable(spec: ModelSpec) -> None:
    """Raise CheckpointError unless the encoder was trained for chunk decoding and its
    conv module (if any) is causal, as WeNet's forward_chunk_by_chunk needs."""
    c = spec.encoder_conf
    conv = spec.encoder_type == "conformer" and bool(c.get("use_cnn_module", True))
    if conv and not bool(c.get("causal", False)):
        raise CheckpointError(
            f"{spec.model_dir}: streaming needs a causal encoder (train.yaml encoder_conf "
            "`causal: true`, a U2++ checkpoint); this conformer's conv module is not causal "
            "(`causal` is false or missing): decode it in full context (no --chunk-size)")
    if not (bool(c.get("use_dynamic_chunk", False)) or int(c.get("static_chunk_size", 0)) > 0):
        raise CheckpointError(
            f"{spec.model_dir}: streaming needs an encoder trained with chunk masks "
            "(encoder_conf `use_dynamic_chunk: true` or `static_chunk_size` > 0, and `causal: "
            "true`); this one was trained with full context only")


def check_model_dir(model_dir: str) -> None:
    """check_streamable on a model directory (CheckpointError when it cannot stream)."""
    check_streamable(load_model_dir(model_dir))


def streaming_settings(model: ASRModel, chunk_size: int, left_chunks: int = -1,
                       beam_size: int = 10) -> Dict:
    """Geometry of chunk decoding (WeNet's onnx_config keys for its streaming export, plus the
    cache shapes)."""
    check_streamable(model.spec)
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be > 0, got {chunk_size}")
    if left_chunks < -1:
        raise ValueError(f"left chunks must be >= 0 or -1 (unlimited), got {left_chunks}")
    enc = model.encoder
    emb = enc.embed
    attn = enc.encoders[0].self_attn
    conv = enc.encoders[0].conv_module
    context = emb.right_context + 1
    return {
        "decoding_chunk_size": int(chunk_size),
        "num_decoding_left_chunks": int(left_chunks),
        # frames of attention cache kept per layer; -1: all of them
        "required_cache_size": int(chunk_size * left_chunks) if left_chunks >= 0 else -1,
        "subsampling_rate": emb.subsampling_rate,
        "right_context": emb.right_context,
        "context": context,
        "decoding_window": (chunk_size - 1) * emb.subsampling_rate + context,
        "stride": chunk_size * emb.subsampling_rate,
        "beam_size": int(beam_size),
        "feat_size": model.spec.input_dim,
        "output_size": enc.d_model,
        "num_layers": len(enc.encoders),
        "attention_heads": attn.h,
        "d_k": attn.d_k,
        "cnn_module_kernel_cache": conv.lorder if conv is not None else 0,
    }


# -- front end ------------------------------------------------------------------------------
class StreamingFbank:
    """Kaldi fbank over waveform pieces (kaldi-native-fbank's OnlineFbank keeps the samples
    of the unfinished frame), so the frames equal `frontend.Fbank` on the whole utterance."""

    def __init__(self, conf: FbankConf = FbankConf()):
        self.conf = conf
        self._opts = Fbank(conf, impl="knf")._opts
        import kaldi_native_fbank as knf  # optional: only the knf front end streams

        self._f = knf.OnlineFbank(self._opts)
        self._next = 0  # index of the next frame to hand out
        self.finished = False

    def accept(self, wav: np.ndarray) -> np.ndarray:
        """Float samples in [-1, 1) -> the frames they complete, (n, num_mel_bins)."""
        if self.finished:
            raise RuntimeError("accept() after finish()")
        if len(wav):
            self._f.accept_waveform(float(self.conf.sample_rate),
                                    (np.asarray(wav, np.float32) * 32768.0).tolist())
        return self._take()

    def finish(self) -> np.ndarray:
        self.finished = True
        self._f.input_finished()
        return self._take()

    def _take(self) -> np.ndarray:
        ready = self._f.num_frames_ready
        # copy before pop(): get_frame() can return a view of memory that pop() frees
        out = [np.array(self._f.get_frame(i), dtype=np.float32) for i in range(self._next, ready)]
        if ready > self._next:
            self._f.pop(ready - self._next)
        self._next = ready
        if not out:
            return np.zeros((0, self.conf.num_mel_bins), np.float32)
        return np.asarray(out, dtype=np.float32)


def window_bounds(num_frames: int, chunk_size: int, subsampling: int, right_context: int
                  ) -> List[Tuple[int, int]]:
    """(start, end) of each encoder window of an utterance, as WeNet's forward_chunk_by_chunk."""
    context = right_context + 1
    stride = chunk_size * subsampling
    window = (chunk_size - 1) * subsampling + context
    return [(cur, min(cur + window, num_frames))
            for cur in range(0, num_frames - context + 1, stride)]


class FrameWindower:
    """Fbank frames (any number at a time) -> encoder windows: full windows as soon as they are
    complete, the last (shorter, at least `context` frames) one at finish(). Keeps the
    `window - stride` frames the next window shares with this one."""

    def __init__(self, chunk_size: int, subsampling: int, right_context: int, feat_dim: int = 80):
        self.context = right_context + 1
        self.stride = chunk_size * subsampling
        self.window = (chunk_size - 1) * subsampling + self.context
        self._buf = np.zeros((0, feat_dim), np.float32)

    def accept(self, frames: np.ndarray) -> List[np.ndarray]:
        if len(frames):
            self._buf = np.concatenate([self._buf, frames.astype(np.float32, copy=False)])
        out = []
        while len(self._buf) >= self.window:
            out.append(self._buf[:self.window].copy())
            self._buf = self._buf[self.stride:]
        return out

    def finish(self) -> List[np.ndarray]:
        out = [self._buf.copy()] if len(self._buf) >= self.context else []
        self._buf = self._buf[:0]
        return out


class StreamingFeatures:
    """Waveform pieces -> encoder windows (fbank + windowing; CMVN is inside the model)."""

    def __init__(self, settings: Dict, conf: FbankConf = FbankConf()):
        self.fbank = StreamingFbank(conf)
        self.windower = FrameWindower(settings["decoding_chunk_size"], settings["subsampling_rate"],
                                      settings["right_context"], conf.num_mel_bins)

    def accept(self, wav: np.ndarray) -> List[np.ndarray]:
        return self.windower.accept(self.fbank.accept(wav))

    def finish(self) -> List[np.ndarray]:
        return self.windower.accept(self.fbank.finish()) + self.windower.finish()


# -- the chunk encoder ----------------------------------------------------------------------
def sinusoid_rows(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """WeNet's positional table rows at integer `positions` (any shape) -> (..., d_model),
    computed as its `pe` buffer is (float32 position x float32 frequency)."""
    pos = positions.to(torch.float32).unsqueeze(-1)
    div = torch.exp(torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
                    * -(math.log(10000.0) / d_model))
    ang = pos * div
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def _attention_chunk(attn, x, bias, pos_emb, cache):
    """Self-attention of a chunk over [cache, chunk]. x (B,t,D); cache (B,h,C,2*d_k) holds the
    keys and values of earlier frames; pos_emb (B,C+t,D) rows of the key positions.
    -> (out (B,t,D), new cache (B,h,C+t,2*d_k))."""
    q = attn._heads(attn.linear_q(x))  # (B,t,h,dk)
    k = attn._heads(attn.linear_k(x)).transpose(1, 2)
    v = attn._heads(attn.linear_v(x)).transpose(1, 2)
    k = torch.cat([cache[..., :attn.d_k], k], dim=2)
    v = torch.cat([cache[..., attn.d_k:], v], dim=2)
    new_cache = torch.cat([k, v], dim=-1)
    if hasattr(attn, "linear_pos"):  # WeNet's rel-pos attention (no rel_shift)
        p = attn._heads(attn.linear_pos(pos_emb)).transpose(1, 2)  # (B,h,C+t,dk)
        ac = torch.matmul((q + attn.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + attn.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        scores = (ac + bd) / math.sqrt(attn.d_k)
    else:
        scores = torch.matmul(q.transpose(1, 2), k.transpose(-2, -1)) / math.sqrt(attn.d_k)
    return attn._attend(scores, v, bias), new_cache


def _conv_chunk(conv, x, cache):
    """Causal conv module continuing from `cache` (B,D,lorder), the last lorder inputs of the
    previous chunk (zeros before the first). -> (out (B,t,D), new cache)."""
    x = torch.cat([cache, x.transpose(1, 2)], dim=2)
    new_cache = x[:, :, -conv.lorder:]
    x = F.glu(conv.pointwise_conv1(x), dim=1)
    x = conv.depthwise_conv(x)
    if conv.use_layer_norm:
        x = conv.norm(x.transpose(1, 2)).transpose(1, 2)
    else:
        x = conv.norm(x)
    x = conv.pointwise_conv2(conv.activation(x))
    return x.transpose(1, 2), new_cache


def _layer_chunk(layer, x, bias, pos_emb, att_cache, cnn_cache):
    """model.EncoderLayer.forward with caches (WeNet's ConformerEncoderLayer / Transformer-
    EncoderLayer with att_cache / cnn_cache)."""
    norm_mha = layer.norm_mha if layer.conformer else layer.norm1
    norm_ff = layer.norm_ff if layer.conformer else layer.norm2
    if layer.feed_forward_macaron is not None:
        x = x + layer.ff_scale * layer.feed_forward_macaron(layer.norm_ff_macaron(x))
    y = norm_mha(x)
    att, new_att = _attention_chunk(layer.self_attn, y, bias, pos_emb, att_cache)
    x = x + (layer.concat_linear(torch.cat((y, att), dim=-1)) if layer.concat_after else att)
    new_cnn = cnn_cache
    if layer.conv_module is not None:
        c, new_cnn = _conv_chunk(layer.conv_module, layer.norm_conv(x), cnn_cache)
        x = x + c
    x = x + layer.ff_scale * layer.feed_forward(norm_ff(x))
    if layer.conv_module is not None:
        x = layer.norm_final(x)
    return x, new_att, new_cnn


class ChunkEncoder(nn.Module):
    """One chunk step of B streams, each at its own offset (WeNet's GPU streaming encoder).

    Inputs (names in export.STREAMING_ENCODER_INPUTS):
      chunk_xs (B,T,feat) f32: encoder windows (raw fbank; CMVN is applied here), T <=
        decoding_window, shorter ones padded; chunk_lens (B,) i32 valid frames of each;
      offset (B,1) i64: encoder frames each stream has produced so far;
      att_cache (B,layers,heads,C,2*d_k) f32: keys|values of the last C frames, right-aligned
        (the most recent frame last); cnn_cache (B,layers,D,kernel-1) f32 (zeros at start);
      cache_mask (B,1,C) f32: 1 where att_cache holds a real frame (0 at start).
    Outputs: log_probs / log_probs_idx (B,t,beam) CTC top-k (f32 / i64), chunk_out (B,t,D),
      chunk_out_lens (B,) i32, r_offset (B,1) = offset + t, r_att_cache, r_cnn_cache,
      r_cache_mask: the caches for the next chunk. With a finite cache (required_cache_size
      = left_chunks * chunk > 0) C is fixed; with -1 the new cache is [cache, chunk] (C + t).
    """

    def __init__(self, model: ASRModel, chunk_size: int, left_chunks: int = -1,
                 beam_size: int = 10):
        super().__init__()
        self.settings = streaming_settings(model, chunk_size, left_chunks, beam_size)
        self.model = model
        self.required_cache_size = self.settings["required_cache_size"]
        self.beam_size = int(beam_size)

    def forward(self, chunk_xs, chunk_lens, offset, att_cache, cnn_cache, cache_mask):
        enc = self.model.encoder
        offset = offset.reshape(-1).to(torch.int64)
        T = chunk_xs.size(1)
        valid = torch.arange(T, device=chunk_xs.device)[None, :] < chunk_lens[:, None]
        xs = enc.global_cmvn(chunk_xs) if enc.global_cmvn is not None else chunk_xs
        xs, valid = enc.embed(xs, valid)
        t = xs.size(1)
        xs = xs * enc.xscale
        if not enc.rel_pos:  # absolute positions of the chunk's frames
            pos = offset[:, None] + torch.arange(t, device=xs.device)[None, :]
            xs = xs + sinusoid_rows(pos, enc.d_model).to(xs.dtype)
        cache_t = att_cache.size(3)
        keys = torch.arange(cache_t + t, device=xs.device)[None, :]
        # WeNet: position_encoding(offset - cache_t, cache_t + t), negative indices -> row 0
        pos_emb = sinusoid_rows(torch.clamp(offset[:, None] - cache_t + keys, min=0),
                                enc.d_model).to(xs.dtype)
        key_valid = torch.cat([cache_mask[:, 0, :] > 0.5, valid], dim=1)  # (B, C+t)
        bias = attention_bias(key_valid, xs.dtype)[:, None, None, :]
        r_att, r_cnn = [], []
        for i, layer in enumerate(enc.encoders):
            xs, a, c = _layer_chunk(layer, xs, bias, pos_emb, att_cache[:, i], cnn_cache[:, i])
            r_att.append(a)
            r_cnn.append(c)
        chunk_out = enc.after_norm(xs)
        r_att_cache = torch.stack(r_att, dim=1)  # (B,layers,h,C+t,2dk)
        r_cache_mask = key_valid.to(cache_mask.dtype)[:, None, :]
        n = self.required_cache_size
        if n > 0:  # finite cache: the last n frames (WeNet's next_cache_start = -n)
            r_att_cache, r_cache_mask = r_att_cache[:, :, :, -n:], r_cache_mask[:, :, -n:]
        elif n == 0:  # no left context
            r_att_cache, r_cache_mask = r_att_cache[:, :, :, :0], r_cache_mask[:, :, :0]
        r_cnn_cache = torch.stack(r_cnn, dim=1)
        logp = self.model.ctc.log_softmax(chunk_out)
        log_probs, log_probs_idx = torch.topk(logp, self.beam_size, dim=2)
        chunk_out_lens = valid.sum(1).to(torch.int32)
        r_offset = (offset + t)[:, None]
        return (log_probs, log_probs_idx, chunk_out, chunk_out_lens, r_offset, r_att_cache,
                r_cnn_cache, r_cache_mask)


class _ChunkEncoderNoCnn(nn.Module):
    """Transformer encoders have no conv cache: WeNet's export drops cnn_cache / r_cnn_cache."""

    def __init__(self, enc: ChunkEncoder):
        super().__init__()
        self.enc = enc

    def forward(self, chunk_xs, chunk_lens, offset, att_cache, cache_mask):
        enc = self.enc.model.encoder
        cnn = torch.zeros(chunk_xs.size(0), len(enc.encoders), enc.d_model, 0,
                          dtype=chunk_xs.dtype, device=chunk_xs.device)
        out = self.enc(chunk_xs, chunk_lens, offset, att_cache, cnn, cache_mask)
        return out[:6] + out[7:]


# -- per-stream state and batched steps ------------------------------------------------------
@dataclass
class EncoderState:
    """What a stream carries from one chunk to the next (one stream; no batch dim)."""
    offset: int
    att_cache: np.ndarray   # (layers, heads, C, 2*d_k) float32, right-aligned
    cnn_cache: np.ndarray   # (layers, D, kernel-1) float32
    cache_mask: np.ndarray  # (1, C) float32

    @classmethod
    def initial(cls, settings: Dict) -> "EncoderState":
        s = settings
        c = max(s["required_cache_size"], 0)  # a finite cache starts full size, all masked
        return cls(0, np.zeros((s["num_layers"], s["attention_heads"], c, 2 * s["d_k"]), np.float32),
                   np.zeros((s["num_layers"], s["output_size"], s["cnn_module_kernel_cache"]),
                            np.float32),
                   np.zeros((1, c), np.float32))


def stack_states(states: Sequence[EncoderState]) -> Dict[str, np.ndarray]:
    """Batch the states of several streams; caches of different lengths (unlimited cache)
    are left-padded with masked frames, which the chunk encoder ignores."""
    C = max(s.att_cache.shape[2] for s in states)
    att = np.zeros((len(states),) + states[0].att_cache.shape[:2] + (C, states[0].att_cache.shape[3]),
                   np.float32)
    mask = np.zeros((len(states), 1, C), np.float32)
    for i, s in enumerate(states):
        c = s.att_cache.shape[2]
        att[i, :, :, C - c:] = s.att_cache
        mask[i, :, C - c:] = s.cache_mask
    return {"offset": np.array([[s.offset] for s in states], np.int64), "att_cache": att,
            "cnn_cache": np.stack([s.cnn_cache for s in states]).astype(np.float32, copy=False),
            "cache_mask": mask}


class TorchChunkBackend:
    """Runs `ChunkEncoder` in PyTorch (CPU or CUDA, fp32)."""

    def __init__(self, model: ASRModel, settings: Dict, device: str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        self.module = ChunkEncoder(model.to(self.device).eval(), settings["decoding_chunk_size"],
                                   settings["num_decoding_left_chunks"],
                                   settings["beam_size"]).eval()
        self.inputs, self.outputs = streaming_encoder_io(settings)

    def run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feed[k])).to(self.device)
                    for k in ("chunk_xs", "chunk_lens", "offset", "att_cache", "cnn_cache",
                              "cache_mask")]
            outs = self.module(*args)
        return {k: v.cpu().numpy() for k, v in zip(STREAMING_ENCODER_OUTPUTS, outs)}


class OnnxChunkBackend:
    """Runs an exported streaming_encoder.onnx in onnxruntime."""

    def __init__(self, path: str, settings: Optional[Dict] = None, providers=None, threads: int = 0):
        import onnxruntime as ort  # heavy optional dependency

        if settings is None:
            with open(os.path.join(os.path.dirname(path), STREAMING_CONFIG_NAME)) as f:
                settings = json.load(f)
        self.settings = settings
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=providers or ["CPUExecutionProvider"])
        self.inputs, self.outputs = streaming_encoder_io(settings)

    def run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        types = {"chunk_lens": np.int32, "offset": np.int64}
        outs = self.session.run(self.outputs, {k: np.ascontiguousarray(feed[k], types.get(k, np.float32))
                                               for k in self.inputs})
        return dict(zip(self.outputs, outs))


@dataclass
class ChunkOutput:
    """The valid encoder frames one step gave one stream."""
    chunk_out: np.ndarray      # (t, D)
    log_probs: np.ndarray      # (t, beam)
    log_probs_idx: np.ndarray  # (t, beam)


class ChunkRunner:
    """One batched chunk step over any streams (each with its own state) on a backend."""

    def __init__(self, backend):
        self.backend = backend
        self.settings = backend.settings

    def initial_state(self) -> EncoderState:
        return EncoderState.initial(self.settings)

    def step(self, windows: Sequence[np.ndarray], states: Sequence[EncoderState]
             ) -> Tuple[List[ChunkOutput], List[EncoderState]]:
        s = self.settings
        lens = np.array([len(w) for w in windows], np.int32)
        if lens.min() < s["context"] or lens.max() > s["decoding_window"]:
            raise ValueError(f"chunk windows must have {s['context']}..{s['decoding_window']} "
                             f"frames, got {lens.tolist()}")
        x = np.zeros((len(windows), int(lens.max()), s["feat_size"]), np.float32)
        for i, w in enumerate(windows):
            x[i, :len(w)] = w
        feed = stack_states(states)
        feed.update(chunk_xs=x, chunk_lens=lens)
        out = self.backend.run(feed)
        results, new_states = [], []
        n = s["required_cache_size"]
        for i, st in enumerate(states):
            t = int(out["chunk_out_lens"][i])
            results.append(ChunkOutput(out["chunk_out"][i, :t], out["log_probs"][i, :t],
                                       out["log_probs_idx"][i, :t]))
            att, mask = out["r_att_cache"][i], out["r_cache_mask"][i]
            if n < 0:  # unlimited: drop this batch's left padding of shorter caches
                keep = st.att_cache.shape[2] + out["chunk_out"].shape[1]
                att, mask = att[:, :, att.shape[2] - keep:], mask[:, mask.shape[1] - keep:]
            cnn = out["r_cnn_cache"][i] if "r_cnn_cache" in out else st.cnn_cache
            new_states.append(EncoderState(int(out["r_offset"][i, 0]), att, cnn, mask))
        return results, new_states


def encode_chunked(runner: ChunkRunner, windows: Sequence[Sequence[np.ndarray]]
                   ) -> Dict[str, np.ndarray]:
    """WeNet's forward_chunk_by_chunk for several utterances at once (their chunks in
    lockstep, one batched step per chunk index) -> the encoder dict the search and rescoring
    take: encoder_out (B,T',D) zero-padded, encoder_out_lens, beam_log_probs(_idx)."""
    states = [runner.initial_state() for _ in windows]
    pieces: List[List[ChunkOutput]] = [[] for _ in windows]
    for k in range(max((len(w) for w in windows), default=0)):
        active = [i for i, w in enumerate(windows) if len(w) > k]
        outs, new = runner.step([windows[i][k] for i in active], [states[i] for i in active])
        for i, o, st in zip(active, outs, new):
            pieces[i].append(o)
            states[i] = st
    s = runner.settings
    lens = np.array([sum(len(o.chunk_out) for o in p) for p in pieces], np.int32)
    T = max(int(lens.max()) if len(lens) else 0, 1)
    B, beam = len(windows), s["beam_size"]
    enc = {"encoder_out": np.zeros((B, T, s["output_size"]), np.float32),
           "encoder_out_lens": lens,
           "beam_log_probs": np.zeros((B, T, beam), np.float32),
           "beam_log_probs_idx": np.zeros((B, T, beam), np.int64)}
    for b, p in enumerate(pieces):
        if p:
            n = lens[b]
            enc["encoder_out"][b, :n] = np.concatenate([o.chunk_out for o in p])
            enc["beam_log_probs"][b, :n] = np.concatenate([o.log_probs for o in p])
            enc["beam_log_probs_idx"][b, :n] = np.concatenate([o.log_probs_idx for o in p])
    return enc


def feature_windows(feats: np.ndarray, settings: Dict) -> List[np.ndarray]:
    """Whole-utterance fbank (T, feat) -> its encoder windows."""
    return [feats[a:b] for a, b in window_bounds(len(feats), settings["decoding_chunk_size"],
                                                  settings["subsampling_rate"],
                                                  settings["right_context"])]


# -- recognition ----------------------------------------------------------------------------
class StreamingRecognizer(Recognizer):
    """WeNet's `simulate_streaming=True` decoding: the chunked encoder (caches, finite or
    unlimited left context), CTC prefix beam search (with the LM if any) over its output, then
    attention rescoring on the whole chunked encoder output with `engine`'s decoder."""

    def __init__(self, engine: Engine, vocab: Vocab, runner: ChunkRunner,
                 fbank_conf: Optional[FbankConf] = None, decoding=None,
                 piece_seconds: float = 0.1):
        super().__init__(engine, vocab, fbank_conf, decoding)
        if runner.settings["beam_size"] != self.settings["beam_size"]:
            raise ValueError(f"chunk encoder top-k {runner.settings['beam_size']} != the "
                             f"export's beam {self.settings['beam_size']}")
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
        nbest = search_batch(enc, d.beam_size, self.settings.get("blank", 0), self.lm, d.lm_weight,
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


# -- ONNX export ----------------------------------------------------------------------------
def _dummy_chunk_inputs(settings: Dict, batch: int, cache_t: int, frames: Optional[int] = None,
                        seed: int = 0, offsets=None):
    g = torch.Generator().manual_seed(seed)
    s = settings
    T = frames or s["decoding_window"]
    x = torch.randn(batch, T, s["feat_size"], generator=g) * 3 + 10
    lens = torch.full((batch,), T, dtype=torch.int32)
    if batch > 1:
        lens[-1] = max(s["context"], T - 5)  # a shorter last chunk, padded
    off = torch.tensor(offsets if offsets is not None else
                       [cache_t + i * s["decoding_chunk_size"] for i in range(batch)],
                       dtype=torch.int64)[:, None]
    att = torch.randn(batch, s["num_layers"], s["attention_heads"], cache_t, 2 * s["d_k"],
                      generator=g)
    cnn = torch.randn(batch, s["num_layers"], s["output_size"], s["cnn_module_kernel_cache"],
                      generator=g)
    mask = torch.ones(batch, 1, cache_t)
    if batch > 1 and cache_t:
        mask[0, :, : cache_t // 2] = 0  # a stream whose cache is not full yet
    return x, lens, off, att, cnn, mask


def export_chunk_encoder(model: ASRModel, out_dir: str, chunk_size: int, left_chunks: int,
                         beam_size: int = 10, verify: bool = True) -> Dict:
    """Write streaming_encoder.onnx (+ streaming_encoder.json) into out_dir: the chunk encoder
    with WeNet's GPU streaming I/O. Batch is dynamic (streams at different offsets); chunk_xs'
    time axis is dynamic too (a last, shorter window need not be padded); the cache axis is
    fixed at left_chunks * chunk frames, or dynamic with left_chunks -1 (a cache that grows)."""
    if left_chunks == 0:
        raise ValueError("export needs left chunks > 0 (a finite cache) or -1 (unlimited)")
    enc = ChunkEncoder(model, chunk_size, left_chunks, beam_size).eval()
    s = dict(enc.settings)
    ins, outs = streaming_encoder_io(s)
    cache_t = s["required_cache_size"] if s["required_cache_size"] > 0 else 3 * chunk_size
    args = _dummy_chunk_inputs(s, 3, cache_t)
    module = enc
    if not s["cnn_module_kernel_cache"]:
        module = _ChunkEncoderNoCnn(enc)
        args = args[:4] + args[5:]
    axes = {n: {0: "B"} for n in ins + outs}
    axes["chunk_xs"][1] = "T"
    for n in ("log_probs", "log_probs_idx", "chunk_out"):
        axes[n][1] = "T_OUT"
    if s["required_cache_size"] < 0:
        axes["att_cache"][3] = axes["cache_mask"][2] = "C"
        axes["r_att_cache"][3] = axes["r_cache_mask"][2] = "C_OUT"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, STREAMING_ONNX_NAME)
    log.info("exporting chunk encoder (chunk %d, left chunks %d) -> %s", chunk_size, left_chunks, path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET,
                          input_names=ins, output_names=outs, do_constant_folding=True,
                          dynamic_axes=axes)
    _static_cache_dims(path, s)
    s["input_names"], s["output_names"] = ins, outs
    with open(os.path.join(out_dir, STREAMING_CONFIG_NAME), "w") as f:
        json.dump(s, f, indent=2)
    if verify:
        s["verification"] = verify_chunk_export(model, path, s)
        with open(os.path.join(out_dir, STREAMING_CONFIG_NAME), "w") as f:
            json.dump(s, f, indent=2)
    return s


def _static_cache_dims(path: str, s: Dict) -> None:
    """The exporter leaves the sliced cache outputs' lengths symbolic; write the fixed ones
    (conv cache always, attention cache when finite) into the graph's output shapes."""
    import onnx  # heavy optional dependency

    fixed = {"r_cnn_cache": {3: s["cnn_module_kernel_cache"]}}
    if s["required_cache_size"] >= 0:
        fixed.update(r_att_cache={3: s["required_cache_size"]},
                     r_cache_mask={2: s["required_cache_size"]})
    m = onnx.load(path)
    for o in m.graph.output:
        for axis, size in fixed.get(o.name, {}).items():
            d = o.type.tensor_type.shape.dim[axis]
            d.ClearField("dim_param")
            d.dim_value = size
    onnx.save(m, path)


def verify_chunk_export(model: ASRModel, path: str, settings: Dict, tol: float = 1e-4) -> Dict:
    """onnxruntime against PyTorch at several batch sizes, offsets, cache lengths and chunk
    lengths (a length frozen at export would show up here)."""
    import onnx  # heavy optional dependency

    onnx.checker.check_model(path)
    ort_b = OnnxChunkBackend(path, settings)
    pt = TorchChunkBackend(model, settings)
    s = settings
    n = s["required_cache_size"]
    cases = [(1, n if n > 0 else 0, None, [0]), (2, n if n > 0 else 5 * s["decoding_chunk_size"], None, None),
             (5, n if n > 0 else 2 * s["decoding_chunk_size"], s["context"] + 1, [7, 0, 300, 41, 2000])]
    report = {}
    for batch, cache_t, frames, offs in cases:
        x, lens, off, att, cnn, mask = _dummy_chunk_inputs(s, batch, cache_t, frames, seed=batch,
                                                          offsets=offs)
        feed = {"chunk_xs": x.numpy(), "chunk_lens": lens.numpy(), "offset": off.numpy(),
                "att_cache": att.numpy(), "cnn_cache": cnn.numpy(), "cache_mask": mask.numpy()}
        a, b = pt.run(feed), ort_b.run(feed)
        errs = {}
        for k in ort_b.outputs:
            if a[k].shape != b[k].shape:
                raise RuntimeError(f"chunk export: {k} shape {b[k].shape} != PyTorch {a[k].shape} "
                                   f"(B={batch}, C={cache_t})")
            if k == "log_probs_idx":
                errs[k] = float((a[k][..., 0] != b[k][..., 0]).sum())
            elif k == "chunk_out":  # padded frames are garbage in both
                errs[k] = max((float(np.abs(a[k][i, :m] - b[k][i, :m]).max())
                               for i, m in enumerate(a["chunk_out_lens"]) if m), default=0.0)
            elif k == "log_probs":
                errs[k] = max((float((np.abs(a[k][i, :m] - b[k][i, :m]) / (1 + np.abs(a[k][i, :m]))).max())
                               for i, m in enumerate(a["chunk_out_lens"]) if m), default=0.0)
            elif k in ("r_att_cache", "r_cnn_cache"):
                errs[k] = float(np.abs(a[k] - b[k]).max()) if a[k].size else 0.0
            else:
                errs[k] = float(np.abs(a[k].astype(np.float64) - b[k]).max()) if a[k].size else 0.0
        key = f"B{batch}_C{cache_t}_T{x.shape[1]}"
        report[key] = errs
        bad = {k: v for k, v in errs.items() if not v <= (10 * tol if k == "log_probs" else tol)}
        # r_att_cache includes padded frames of a short last chunk: garbage but finite and equal
        if bad:
            raise RuntimeError(f"chunk export differs from PyTorch at {key}: {bad}")
        log.info("verify chunk export %s: %s", key, errs)
    return report


def _code_fingerprint(model_dir: str, chunk_size: int, left_chunks: int, beam_size: int) -> str:
    h = hashlib.sha1(f"{os.path.abspath(model_dir)}|{chunk_size}|{left_chunks}|{beam_size}".encode())
    for name in ("train.yaml", "final.pt"):
        p = os.path.join(model_dir, name)
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{name}:{st.st_size if st else -1}:{int(st.st_mtime) if st else -1}".encode())
    # the code that shapes the export (found through the modules, wherever they live)
    for mod in (CheckpointError.__module__, ASRModel.__module__, __name__):
        with open(sys.modules[mod].__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def ensure_chunk_export(model: ASRModel, engine_dir: str, chunk_size: int, left_chunks: int,
                        beam_size: int) -> str:
    """The chunk encoder export for these settings under engine_dir (exported once)."""
    fp = _code_fingerprint(model.spec.model_dir, chunk_size, left_chunks, beam_size)
    out = os.path.join(engine_dir, f"streaming_chunk{chunk_size}_left{left_chunks}")
    cfg = os.path.join(out, STREAMING_CONFIG_NAME)
    if os.path.exists(cfg):
        with open(cfg) as f:
            if json.load(f).get("fingerprint") == fp:
                return os.path.join(out, STREAMING_ONNX_NAME)
    s = export_chunk_encoder(model, out, chunk_size, left_chunks, beam_size)
    s["fingerprint"] = fp
    with open(cfg, "w") as f:
        json.dump(s, f, indent=2)
    return os.path.join(out, STREAMING_ONNX_NAME)


def open_chunk_runner(backend: str, model: ASRModel, chunk_size: int, left_chunks: int = -1,
                      beam_size: int = 10, engine_dir: Optional[str] = None, device: str = "cpu",
                      threads: int = 0) -> ChunkRunner:
    """backend "torch" (ChunkEncoder in PyTorch) or "onnxruntime" (exported once into
    engine_dir; a finite cache needs left_chunks > 0, or -1)."""
    if backend == "torch":
        return ChunkRunner(TorchChunkBackend(
            model, streaming_settings(model, chunk_size, left_chunks, beam_size), device))
    if backend == "onnxruntime":
        if engine_dir is None:
            raise ValueError("the onnxruntime chunk encoder needs an engine dir")
        path = ensure_chunk_export(model, engine_dir, chunk_size, left_chunks, beam_size)
        return ChunkRunner(OnnxChunkBackend(path, threads=threads))
    raise ValueError(f"chunk decoding runs on the torch or onnxruntime engine, not {backend!r}")


def streaming_recognizer(engine: Engine, engine_dir: str, model_dir: Optional[str], backend: str,
                         chunk_size: int, left_chunks: int = -1, decoding=None,
                         device: str = "cpu", threads: int = 0) -> StreamingRecognizer:
    """The chunk-by-chunk recognizer of `wenet-triton transcribe --chunk-size`: the chunk
    encoder on `backend` (torch: the engine's own PyTorch model; onnxruntime: exported once
    into engine_dir), search and rescoring with `engine`."""
    settings = engine.settings
    model = getattr(engine, "model", None)
    if not isinstance(model, ASRModel):
        model = ASRModel.from_spec(load_model_dir(model_dir or settings["source_model_dir"]))
    runner = open_chunk_runner(backend, model, chunk_size, left_chunks, settings["beam_size"],
                               engine_dir, device, threads)
    return StreamingRecognizer(engine, Vocab.from_engine_dir(engine_dir, settings), runner,
                               decoding=decoding)
