"""U2 / U2++ conformer (and transformer) ASR model with WeNet's state_dict names.

Batch-first; full context for inference (dynamic chunk masks only when training, see
wenet_triton.train). Differences from WeNet's code are deliberate and keep WeNet's
numbers: masks and positional embeddings are built once per batch, BatchNorm is folded
into the depthwise conv, positional tables are computed from the symbolic length
(so ONNX exports have no length frozen in), and the non-causal conv module zeroes padded
frames after the GLU so that a padded batch gives what each utterance gives alone.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from wenet_triton.model.checkpoint import CheckpointError, ModelSpec


def make_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on padding."""
    seq = torch.arange(max_len, device=lengths.device, dtype=lengths.dtype)
    return seq.unsqueeze(0) >= lengths.unsqueeze(1)


def chunk_mask(length: int, chunk_size: int, device) -> torch.Tensor:
    """(T, T) bool: frame i sees frames j < (i // chunk + 1) * chunk (full left context)."""
    idx = torch.arange(length, device=device)
    return idx[None, :] < (idx[:, None] // chunk_size + 1) * chunk_size


def attention_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (..., T) with True = attend  ->  additive bias, 0 or a large negative."""
    return (~valid).to(dtype) * torch.finfo(dtype).min


def sinusoid_table(length: torch.Tensor | int, d_model: int, device, dtype=torch.float32):
    """WeNet's positional table rows 0..length-1, computed like its `pe` buffer (float32)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                    * -(math.log(10000.0) / d_model))
    ang = pos * div
    # interleave: even columns sin, odd columns cos
    pe = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(1)
    return pe.unsqueeze(0).to(dtype)


_ACTIVATIONS = {
    "swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise CheckpointError(f"activation_type {name!r} not supported ({', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]()


class GlobalCMVN(nn.Module):
    def __init__(self, mean: torch.Tensor, istd: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("istd", istd)

    def forward(self, x):
        return (x - self.mean) * self.istd


class Conv2dSubsampling(nn.Module):
    """conv2d (4x), conv2d6 (6x), conv2d8 (8x) front-ends; names match WeNet."""

    # (kernel, stride) of each conv layer
    LAYOUTS = {"conv2d": [(3, 2), (3, 2)], "conv2d6": [(3, 2), (5, 3)],
               "conv2d8": [(3, 2), (3, 2), (3, 2)]}

    def __init__(self, kind: str, idim: int, odim: int):
        super().__init__()
        if kind not in self.LAYOUTS:
            raise CheckpointError(f"input_layer {kind!r} not supported ({', '.join(self.LAYOUTS)})")
        self.layout = self.LAYOUTS[kind]
        layers, cin, f = [], 1, idim
        for k, s in self.layout:
            layers += [nn.Conv2d(cin, odim, k, s), nn.ReLU()]
            cin, f = odim, (f - k) // s + 1
        self.conv = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(odim * f, odim))
        self.subsampling_rate = math.prod(s for _, s in self.layout)
        # frames of context to the right of a step (WeNet's `right_context`)
        rc, mult = 0, 1
        for k, s in self.layout:
            rc += (k - 1) * mult
            mult *= s
        self.right_context = rc

    def output_frames(self, frames: int) -> int:
        """Frames out for `frames` frames in (what slicing the mask below gives)."""
        for k, s in self.layout:
            frames = (frames - k) // s + 1
        return frames

    def forward(self, x: torch.Tensor, valid: torch.Tensor):
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        x = self.out(x.transpose(1, 2).flatten(2))
        for k, s in self.layout:  # WeNet: x_mask[:, :, k-1::s]
            valid = valid[:, k - 1::s]
        return x, valid


class MultiHeadedAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int, bias: Tuple[bool, bool, bool] = (True, True, True)):
        super().__init__()
        assert n_feat % n_head == 0
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat, bias=bias[0])
        self.linear_k = nn.Linear(n_feat, n_feat, bias=bias[1])
        self.linear_v = nn.Linear(n_feat, n_feat, bias=bias[2])
        self.linear_out = nn.Linear(n_feat, n_feat)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B,T,D) -> (B,T,h,dk)
        return x.view(x.size(0), -1, self.h, self.d_k)

    def _attend(self, scores: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(scores + bias, dim=-1)
        x = torch.matmul(attn, v)  # (B,h,T1,dk)
        x = x.transpose(1, 2).flatten(2)
        return self.linear_out(x)

    def forward(self, q_in, k_in, v_in, bias, pos_emb=None):
        q = self._heads(self.linear_q(q_in)).transpose(1, 2)
        k = self._heads(self.linear_k(k_in)).transpose(1, 2)
        v = self._heads(self.linear_v(v_in)).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self._attend(scores, v, bias)


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """WeNet's rel-pos attention: pos_bias_u/v, linear_pos, no rel_shift."""

    def __init__(self, n_head, n_feat, bias=(True, True, True)):
        super().__init__(n_head, n_feat, bias)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    def forward(self, q_in, k_in, v_in, bias, pos_emb=None):
        q = self._heads(self.linear_q(q_in))  # (B,T,h,dk)
        k = self._heads(self.linear_k(k_in)).transpose(1, 2)
        v = self._heads(self.linear_v(v_in)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1,h,T,dk)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        scores = (ac + bd) / math.sqrt(self.d_k)
        return self._attend(scores, v, bias)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int, act: nn.Module):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.activation = act
        self.w_2 = nn.Linear(hidden, idim)

    def forward(self, x):
        return self.w_2(self.activation(self.w_1(x)))


class ConvolutionModule(nn.Module):
    def __init__(self, channels: int, kernel_size: int, act: nn.Module, norm: str,
                 causal: bool, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1, bias=bias)
        if causal:
            self.lorder, padding = kernel_size - 1, 0
        else:
            if (kernel_size - 1) % 2:
                raise CheckpointError(f"non-causal cnn_module_kernel must be odd, got {kernel_size}")
            self.lorder, padding = 0, (kernel_size - 1) // 2
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=padding,
                                        groups=channels, bias=bias)
        if norm == "batch_norm":
            self.use_layer_norm = False
            self.norm = nn.BatchNorm1d(channels)
        elif norm == "layer_norm":
            self.use_layer_norm = True
            self.norm = nn.LayerNorm(channels, eps=eps)
        else:
            raise CheckpointError(f"cnn_module_norm {norm!r} not supported")
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1, bias=bias)
        self.activation = act

    @torch.no_grad()
    def fold_batch_norm(self):
        if self.use_layer_norm or isinstance(self.norm, nn.Identity):
            return
        bn, dw = self.norm, self.depthwise_conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = dw.bias if dw.bias is not None else torch.zeros_like(bn.running_mean)
        new = nn.Conv1d(dw.in_channels, dw.out_channels, dw.kernel_size[0],
                        padding=dw.padding[0], groups=dw.groups, bias=True)
        new.weight.copy_(dw.weight * scale[:, None, None])
        new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        self.depthwise_conv, self.norm = new, nn.Identity()

    def forward(self, x: torch.Tensor, mask_pad: torch.Tensor) -> torch.Tensor:
        # x (B,T,C); mask_pad (B,1,T) float, 1 on valid frames
        x = x.transpose(1, 2) * mask_pad
        if self.lorder > 0:
            # WeNet pads *before* pointwise_conv1, so the pad frames carry glu(bias).
            x = F.pad(x, (self.lorder, 0), "constant", 0.0)
            x = F.glu(self.pointwise_conv1(x), dim=1)
        else:
            # zero padded frames after GLU: a batch then equals each utterance alone
            x = F.glu(self.pointwise_conv1(x), dim=1) * mask_pad
        return (self.after_glu(x) * mask_pad).transpose(1, 2)

    def after_glu(self, x: torch.Tensor) -> torch.Tensor:
        """depthwise conv -> norm -> activation -> pointwise_conv2, on (B, C, T') after the
        GLU (T' includes the causal left context; the output has T' - lorder frames)."""
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        return self.pointwise_conv2(self.activation(x))


class EncoderLayer(nn.Module):
    """Conformer layer (macaron FFN, MHA, conv, FFN, final norm) or transformer layer."""

    def __init__(self, size, self_attn, feed_forward, feed_forward_macaron=None,
                 conv_module=None, normalize_before=True, concat_after=False, eps=1e-5):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.feed_forward_macaron = feed_forward_macaron
        self.conv_module = conv_module
        self.conformer = feed_forward_macaron is not None or conv_module is not None
        if self.conformer:
            self.norm_ff = nn.LayerNorm(size, eps=eps)
            self.norm_mha = nn.LayerNorm(size, eps=eps)
            if feed_forward_macaron is not None:
                self.norm_ff_macaron = nn.LayerNorm(size, eps=eps)
            if conv_module is not None:
                self.norm_conv = nn.LayerNorm(size, eps=eps)
                self.norm_final = nn.LayerNorm(size, eps=eps)
        else:
            self.norm1 = nn.LayerNorm(size, eps=eps)
            self.norm2 = nn.LayerNorm(size, eps=eps)
        self.ff_scale = 0.5 if feed_forward_macaron is not None else 1.0
        self.normalize_before = normalize_before
        self.concat_after = concat_after
        if concat_after:
            self.concat_linear = nn.Linear(2 * size, size)
        if not normalize_before:
            raise CheckpointError("normalize_before: false is not supported for encoders")

    def forward(self, x, att_bias, pos_emb, mask_pad):
        norm_mha = self.norm_mha if self.conformer else self.norm1
        norm_ff = self.norm_ff if self.conformer else self.norm2
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.feed_forward_macaron(self.norm_ff_macaron(x))
        y = norm_mha(x)
        att = self.self_attn(y, y, y, att_bias, pos_emb)
        x = x + (self.concat_linear(torch.cat((y, att), dim=-1)) if self.concat_after else att)
        if self.conv_module is not None:
            x = x + self.conv_module(self.norm_conv(x), mask_pad)
        x = x + self.ff_scale * self.feed_forward(norm_ff(x))
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


class Encoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        c = spec.encoder_conf
        kind = spec.encoder_type
        if kind not in ("conformer", "transformer"):
            raise CheckpointError(f"encoder {kind!r} not supported (conformer, transformer)")
        d = int(c.get("output_size", 256))
        heads = int(c.get("attention_heads", 4))
        units = int(c.get("linear_units", 2048))
        blocks = int(c.get("num_blocks", 6))
        eps = float(c.get("norm_eps", c.get("layer_norm_eps", 1e-5)))
        pos = c.get("pos_enc_layer_type", "rel_pos" if kind == "conformer" else "abs_pos")
        if pos not in ("rel_pos", "abs_pos"):
            raise CheckpointError(f"pos_enc_layer_type {pos!r} not supported (rel_pos, abs_pos)")
        if c.get("layer_norm_type", "layer_norm") != "layer_norm":
            raise CheckpointError(f"layer_norm_type {c['layer_norm_type']!r} not supported")
        self.rel_pos = pos == "rel_pos"
        self.d_model = d
        self.xscale = math.sqrt(d)
        self.global_cmvn: Optional[GlobalCMVN] = None
        if spec.cmvn_mean is not None:
            self.global_cmvn = GlobalCMVN(torch.from_numpy(spec.cmvn_mean).float(),
                                          torch.from_numpy(spec.cmvn_istd).float())
        self.embed = Conv2dSubsampling(c.get("input_layer", "conv2d"), spec.input_dim, d)
        qkv_bias = (bool(c.get("query_bias", True)), bool(c.get("key_bias", True)),
                    bool(c.get("value_bias", True)))
        act = c.get("activation_type", "swish" if kind == "conformer" else "relu")
        conformer = kind == "conformer"
        macaron = conformer and bool(c.get("macaron_style", True))
        use_cnn = conformer and bool(c.get("use_cnn_module", True))
        attn_cls = RelPositionMultiHeadedAttention if self.rel_pos else MultiHeadedAttention
        layers = []
        for _ in range(blocks):
            layers.append(EncoderLayer(
                d, attn_cls(heads, d, qkv_bias),
                PositionwiseFeedForward(d, units, activation(act)),
                PositionwiseFeedForward(d, units, activation(act)) if macaron else None,
                ConvolutionModule(d, int(c.get("cnn_module_kernel", 15)), activation(act),
                                  c.get("cnn_module_norm", "batch_norm"), bool(c.get("causal", False)),
                                  bool(c.get("conv_bias", True)), eps) if use_cnn else None,
                bool(c.get("normalize_before", True)), bool(c.get("concat_after", False)), eps))
        self.encoders = nn.ModuleList(layers)
        self.after_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, xs: torch.Tensor, xs_lens: torch.Tensor, chunk_size: int = 0):
        """chunk_size > 0 (training, WeNet's dynamic chunk): each frame attends to frames up
        to the end of its own chunk; 0 = full context (inference and every export)."""
        valid = ~make_pad_mask(xs_lens, xs.size(1))
        if self.global_cmvn is not None:
            xs = self.global_cmvn(xs)
        xs, valid = self.embed(xs, valid)
        pe = sinusoid_table(xs.size(1), self.d_model, xs.device, xs.dtype)
        xs = xs * self.xscale
        if not self.rel_pos:
            xs = xs + pe
        if chunk_size > 0:
            att_bias = attention_bias(valid[:, None, :] & chunk_mask(
                xs.size(1), chunk_size, xs.device)[None], xs.dtype)[:, None]  # (B,1,T,T)
        else:
            att_bias = attention_bias(valid, xs.dtype)[:, None, None, :]  # (B,1,1,T)
        mask_pad = valid.to(xs.dtype).unsqueeze(1)  # (B,1,T)
        for layer in self.encoders:
            xs = layer(xs, att_bias, pe, mask_pad)
        return self.after_norm(xs), valid.sum(1).to(torch.int32)


class DecoderLayer(nn.Module):
    def __init__(self, size, self_attn, src_attn, feed_forward, normalize_before=True,
                 concat_after=False, eps=1e-5):
        super().__init__()
        self.self_attn, self.src_attn, self.feed_forward = self_attn, src_attn, feed_forward
        self.norm1 = nn.LayerNorm(size, eps=eps)
        self.norm2 = nn.LayerNorm(size, eps=eps)
        self.norm3 = nn.LayerNorm(size, eps=eps)
        self.normalize_before = normalize_before
        self.concat_after = concat_after
        if concat_after:
            self.concat_linear1 = nn.Linear(2 * size, size)
            self.concat_linear2 = nn.Linear(2 * size, size)

    def _block(self, x, norm, fn, concat):
        y = norm(x) if self.normalize_before else x
        out = fn(y)
        x = x + (concat(torch.cat((y, out), dim=-1)) if concat is not None else out)
        return x if self.normalize_before else norm(x)

    def forward(self, x, tgt_bias, memory, mem_bias):
        x = self._block(x, self.norm1, lambda y: self.self_attn(y, y, y, tgt_bias),
                        self.concat_linear1 if self.concat_after else None)
        x = self._block(x, self.norm2, lambda y: self.src_attn(y, memory, memory, mem_bias),
                        self.concat_linear2 if self.concat_after else None)
        return self._block(x, self.norm3, self.feed_forward, None)


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, d: int, c: Dict, num_blocks: int):
        super().__init__()
        eps = float(c.get("norm_eps", c.get("layer_norm_eps", 1e-5)))
        heads = int(c.get("attention_heads", 4))
        units = int(c.get("linear_units", 2048))
        if c.get("input_layer", "embed") != "embed":
            raise CheckpointError(f"decoder input_layer {c['input_layer']!r} not supported")
        if not c.get("src_attention", True):
            raise CheckpointError("decoders without src_attention are not supported")
        self.d_model = d
        self.embed = nn.Sequential(nn.Embedding(vocab_size, d))
        self.normalize_before = bool(c.get("normalize_before", True))
        self.after_norm = nn.LayerNorm(d, eps=eps)
        self.output_layer = nn.Linear(d, vocab_size)
        act = c.get("activation_type", "relu")
        qkv_bias = (bool(c.get("query_bias", True)), bool(c.get("key_bias", True)),
                    bool(c.get("value_bias", True)))
        self.decoders = nn.ModuleList(
            DecoderLayer(d, MultiHeadedAttention(heads, d, qkv_bias),
                         MultiHeadedAttention(heads, d, qkv_bias),
                         PositionwiseFeedForward(d, units, activation(act)),
                         self.normalize_before, bool(c.get("concat_after", False)), eps)
            for _ in range(num_blocks))

    def forward(self, memory, mem_bias, ys_in, ys_lens):
        """ys_in (N, L) starts with <sos>; returns logits (N, L, V)."""
        L = ys_in.size(1)
        valid = ~make_pad_mask(ys_lens, L)  # (N, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=ys_in.device).tril()
        tgt_bias = attention_bias(valid[:, None, :] & causal[None], memory.dtype).unsqueeze(1)
        x = self.embed(ys_in) * math.sqrt(self.d_model) + sinusoid_table(
            L, self.d_model, ys_in.device, memory.dtype)
        for layer in self.decoders:
            x = layer(x, tgt_bias, memory, mem_bias)
        if self.normalize_before:
            x = self.after_norm(x)
        return self.output_layer(x)


class BiTransformerDecoder(nn.Module):
    def __init__(self, vocab_size, d, c):
        super().__init__()
        self.left_decoder = TransformerDecoder(vocab_size, d, c, int(c.get("num_blocks", 6)))
        self.right_decoder = TransformerDecoder(vocab_size, d, c, int(c.get("r_num_blocks", 0)))


class CTC(nn.Module):
    def __init__(self, odim: int, d: int):
        super().__init__()
        self.ctc_lo = nn.Linear(d, odim)

    def log_softmax(self, x):
        return F.log_softmax(self.ctc_lo(x).float(), dim=-1)


# Keys real checkpoints carry that hold no weights we need.
_IGNORED_KEYS = ("encoder.embed.pos_enc.pe", "encoder.global_cmvn.")
_IGNORED_SUFFIXES = (".embed.1.pe", "num_batches_tracked")


class ASRModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec)
        d = self.encoder.d_model
        self.ctc = CTC(spec.vocab_size, d)
        if spec.decoder_type == "transformer":
            self.decoder = TransformerDecoder(spec.vocab_size, d, spec.decoder_conf,
                                              int(spec.decoder_conf.get("num_blocks", 6)))
        elif spec.decoder_type == "bitransformer":
            self.decoder = BiTransformerDecoder(spec.vocab_size, d, spec.decoder_conf)
        else:
            raise CheckpointError(f"decoder {spec.decoder_type!r} not supported "
                                  "(transformer, bitransformer)")

    @classmethod
    def from_spec(cls, spec: ModelSpec, fuse: bool = True) -> "ASRModel":
        model = cls(spec)
        model.load_wenet_state_dict(spec.state_dict)
        model.eval()
        if fuse:
            model.fuse()
        return model

    def load_wenet_state_dict(self, sd: Dict[str, torch.Tensor]):
        own = self.state_dict()
        sd = dict(sd)
        # tied output layer (v3 `tie_word_embedding`)
        for prefix in ("decoder.", "decoder.left_decoder.", "decoder.right_decoder."):
            if prefix + "output_layer.weight" in own and prefix + "output_layer.weight" not in sd \
                    and prefix + "embed.0.weight" in sd:
                sd[prefix + "output_layer.weight"] = sd[prefix + "embed.0.weight"]
        unexpected = [k for k in sd if k not in own and not k.startswith(_IGNORED_KEYS)
                      and not k.endswith(_IGNORED_SUFFIXES)]
        missing = [k for k in own if k not in sd and not k.startswith("encoder.global_cmvn.")
                   and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise CheckpointError(
                "final.pt does not match train.yaml: "
                + (f"missing {len(missing)} keys e.g. {missing[:4]}; " if missing else "")
                + (f"unexpected {len(unexpected)} keys e.g. {unexpected[:4]}" if unexpected else ""))
        for k, v in sd.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise CheckpointError(f"final.pt key {k} has shape {tuple(v.shape)}, "
                                      f"train.yaml implies {tuple(own[k].shape)}")
        self.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)

    def fuse(self):
        for layer in self.encoder.encoders:
            if layer.conv_module is not None:
                layer.conv_module.fold_batch_norm()
        return self

    # -- inference API ---------------------------------------------------------------
    def encode(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        enc, lens = self.encoder(speech, speech_lengths)
        return enc, lens, self.ctc.log_softmax(enc)

    def decoder_logits(self, memory, memory_lens, ys_in, ys_lens, reverse: bool = False):
        dec = self.decoder
        if isinstance(dec, BiTransformerDecoder):
            dec = dec.right_decoder if reverse else dec.left_decoder
        elif reverse:
            raise ValueError("this model has no right-to-left decoder")
        mem_bias = attention_bias(~make_pad_mask(memory_lens, memory.size(1)),
                                  memory.dtype)[:, None, None, :]
        return dec(memory, mem_bias, ys_in, ys_lens)


class ExportEncoder(nn.Module):
    """WeNet GPU-export encoder contract."""

    def __init__(self, model: ASRModel, beam_size: int = 10):
        super().__init__()
        self.model, self.beam_size = model, beam_size

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        enc, lens, logp = self.model.encode(speech, speech_lengths)
        top_v, top_i = torch.topk(logp, self.beam_size, dim=2)
        return enc, lens, logp, top_v, top_i


class ExportDecoder(nn.Module):
    """WeNet GPU-export decoder contract: scores n-best hyps, returns best_index and score.

    hyps_pad_sos_eos (B, beam, L+2): <sos> hyp <eos> padded with anything valid;
    hyps_lens_sos (B, beam): hyp length + 1; r_hyps_pad_sos_eos: reversed hyps likewise;
    ctc_score (B, beam).
    """

    def __init__(self, model: ASRModel, ctc_weight: float, reverse_weight: float):
        super().__init__()
        self.model = model
        self.ctc_weight = float(ctc_weight)
        self.reverse_weight = float(reverse_weight)
        if self.reverse_weight > 0 and not model.spec.is_bidirectional:
            raise ValueError("reverse_weight > 0 needs a bitransformer decoder")

    def _score(self, memory, mem_lens, pad_sos_eos, lens_sos, reverse):
        n, l2 = pad_sos_eos.shape
        ys_in, ys_out = pad_sos_eos[:, :-1], pad_sos_eos[:, 1:]
        logp = F.log_softmax(self.model.decoder_logits(memory, mem_lens, ys_in, lens_sos,
                                                       reverse).float(), dim=-1)
        valid = ~make_pad_mask(lens_sos, l2 - 1)
        idx = torch.where(valid, ys_out, torch.zeros_like(ys_out)).long()
        tok = logp.gather(2, idx.unsqueeze(2)).squeeze(2)
        return (tok * valid.to(tok.dtype)).sum(1)

    def forward(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos: Optional[torch.Tensor] = None,
                ctc_score: Optional[torch.Tensor] = None):
        B, T, D = encoder_out.shape
        beam = hyps_pad_sos_eos.size(1)
        memory = encoder_out.unsqueeze(1).expand(B, beam, T, D).reshape(-1, T, D)
        mem_lens = encoder_out_lens.unsqueeze(1).expand(B, beam).reshape(-1)
        lens = hyps_lens_sos.reshape(-1)
        l2 = hyps_pad_sos_eos.size(2)
        score = self._score(memory, mem_lens, hyps_pad_sos_eos.reshape(-1, l2), lens, False)
        if self.reverse_weight > 0:
            r = self._score(memory, mem_lens, r_hyps_pad_sos_eos.reshape(-1, l2), lens, True)
            score = score * (1 - self.reverse_weight) + r * self.reverse_weight
        score = score.view(B, beam) + self.ctc_weight * ctc_score
        return torch.argmax(score, dim=1).to(torch.int32), score
