"""The encoder's chunk forward with attention and causal-conv caches (WeNet v2.2.1
`BaseEncoder.forward_chunk`), batched over streams at different offsets, and which models
can stream (causal, chunk-trained)."""
from __future__ import annotations

import logging
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from wenet_triton.model.checkpoint import CheckpointError, ModelSpec, load_model_dir
from wenet_triton.model.conformer import ASRModel, attention_bias

log = logging.getLogger(__name__)


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
    x = conv.after_glu(F.glu(conv.pointwise_conv1(x), dim=1))
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
