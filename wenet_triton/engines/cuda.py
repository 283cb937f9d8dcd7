"""GPU engine (`torch_cuda`): the same model math on CUDA in fp16/bf16 (or fp32) with
fused kernels from csrc/ and CUDA graphs per (batch, length) bucket.

What makes it fast, each keeping WeNet's numbers:
- rel-pos attention as ONE scaled_dot_product_attention call: (q+u)·k + (q+v)·p equals
  [q+u, q+v]·[k, p] with head dim 2*d_k, so the (B,h,T,T) position term is never
  materialized; only a key-padding mask is passed; the keys [k, p] per head are packed by one
  copy kernel (torch.cat ran at a quarter of memory bandwidth on the strided inputs);
- residual add + LayerNorm in one kernel (fp32 statistics); GLU + depthwise conv (BatchNorm
  folded) + LayerNorm + swish in one kernel; CTC log-softmax + top-k in one kernel;
  decoder log-softmax + gather in one kernel (no (N,L,V) log-prob tensor);
- the CTC and decoder output projections accumulate AND store in fp32;
- xscale folded into the subsampling output linear, q/k/v fused into one GEMM, the
  decoder's cross-attention K/V computed once per utterance instead of once per hypothesis;
- CUDA graphs: inputs are padded to buckets (padding never changes valid outputs: the
  model is batch-invariant), one graph per bucket, shared memory pool.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from wenet_triton.contract import ENCODER_OUTPUTS, EngineSettings
from wenet_triton.engines import fp8, kernels, triton_conv, triton_ctc, triton_ffn, triton_gemm, triton_vocab
from wenet_triton.engines.base import Engine
from wenet_triton.model.conformer import ASRModel, BiTransformerDecoder, sinusoid_table
from wenet_triton.model.streaming import sinusoid_rows

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _pow2(x: int, base: int) -> int:
    """Smallest base x 2^k that is >= x: few buckets for lengths without bound (the streams'
    finals: a few ended streams per batch, where the decoder costs its launches, not its
    padded frames)."""
    b = base
    while b < x:
        b *= 2
    return b


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable: 1 / true / on / yes or 0 / false / off / no; unset or
    empty: default; anything else is an error naming the variable."""
    v = os.environ.get(name, "").strip().lower()
    if not v:
        return default
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{name}={v!r}: use 1 (on) or 0 (off)")


class _tf32:
    """Allow TF32 GEMMs inside the block. Exact when the fp32 operands hold fp16/bf16 values:
    TF32 keeps 10 mantissa bits, so products are exact and accumulation is fp32."""
    def __enter__(self):
        m = torch.backends.cuda.matmul
        self.new_api = hasattr(m, "fp32_precision")
        self.prev = m.fp32_precision if self.new_api else m.allow_tf32
        if self.new_api:
            m.fp32_precision = "tf32"
        else:
            m.allow_tf32 = True

    def __exit__(self, *exc):
        m = torch.backends.cuda.matmul
        if self.new_api:
            m.fp32_precision = self.prev
        else:
            m.allow_tf32 = self.prev


def linear_f32(x: torch.Tensor, w32: torch.Tensor, b32: torch.Tensor) -> torch.Tensor:
    """x @ w.T + b accumulated and stored in fp32. w32/b32 are fp32 tensors; for fp16/bf16
    x they hold fp16/bf16-rounded weights, so a TF32 GEMM computes the exact products."""
    x2 = x.reshape(-1, x.shape[-1])
    exact_tf32 = x.dtype != torch.float32 and x.is_cuda
    with _tf32() if exact_tf32 else contextlib.nullcontext():
        y = torch.addmm(b32, x2.float(), w32.t())
    return y.view(*x.shape[:-1], w32.shape[0])


def additive_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True = attend) as SDPA's additive form, 0 / -inf in the
    attention dtype: made once per call instead of SDPA converting the boolean mask in every
    layer (a where plus two fills per attention call, ~50 launches per encoder pass). The
    scores come out the same: + 0 keeps a score, -inf removes it as the boolean mask does."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(
        ~valid, float("-inf"))


def linear_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relu(x @ w.T + b); on CUDA one cuBLASLt GEMM with a bias + ReLU epilogue (the same
    values: rounding keeps the sign, so relu(round(v)) = round(relu(v)))."""
    if not x.is_cuda:
        return F.relu(F.linear(x, w, b))
    y = torch._addmm_activation(b, x.reshape(-1, x.shape[-1]), w.t())
    return y.view(*x.shape[:-1], w.shape[0])


_CONV_RELU = {"fused": None}  # None: untried; True / False: cudnn_convolution_relu works here


def conv2d_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride) -> torch.Tensor:
    """relu(conv2d(x, w, b, stride)); on CUDA cuDNN's fused convolution + bias + ReLU when this
    build has it (one kernel instead of convolution, bias add, ReLU), else the three ops."""
    if x.is_cuda and _CONV_RELU["fused"] is not False:
        try:
            y = torch.cudnn_convolution_relu(x, w, b, tuple(stride), (0, 0), (1, 1), 1)
            _CONV_RELU["fused"] = True
            return y
        except (RuntimeError, AttributeError):
            _CONV_RELU["fused"] = False
    return F.relu(F.conv2d(x, w, b, stride))


_SDPA_CHOICE: Dict[Tuple, object] = {}


_CUDNN_FIRST = ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
_PLANLESS_FIRST = ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def sdpa(q, k, v, mask, scale=None, tag: str = "", cudnn_first: bool = True, causal: bool = False):
    """scaled_dot_product_attention on the first fused backend that takes these shapes
    (cuDNN, then memory-efficient), resolved once per shape signature (and `tag`: a caller
    whose shapes differ in other ways, e.g. more keys than queries) and cached. Left to
    itself SDPA chose its math path (fp32 bmm + softmax) for the rel-pos encoder call.
    cudnn_first=False tries memory-efficient attention first: cuDNN builds an execution plan
    for every new shape, which costs a stall where shapes keep changing (eager rescoring).
    causal=True (mask None): query i attends keys 0..i, without a mask tensor."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    key = (tag, cudnn_first, causal, q.shape[-1], v.shape[-1], q.dtype,
           None if mask is None else (mask.dtype, mask.shape[-2] == 1))
    choice = _SDPA_CHOICE.get(key)
    if choice is not None:
        with sdpa_kernel([choice]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal)
    for name in (_CUDNN_FIRST if cudnn_first else _PLANLESS_FIRST):
        be = getattr(SDPBackend, name)
        try:
            with sdpa_kernel([be]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                     is_causal=causal)
        except RuntimeError:
            continue
        _SDPA_CHOICE[key] = be
        return out
    raise RuntimeError("no attention backend accepted the inputs")


class Parts(NamedTuple):
    """A GEMM's output not yet reduced: S fp32 split-K partials (S, ..., N) and the bias (N):
    the consumer (add_layernorm_parts) sums, biases and rounds them."""
    parts: torch.Tensor
    bias: torch.Tensor


def splitk_policy(spec: Optional[str] = None) -> List[Tuple[int, int]]:
    """The FFN down-projection's split-K rule, "rows:S,rows:S,...": a GEMM of at most `rows`
    rows runs as S batched GEMMs over slices of K (2048 for the AISHELL shape) whose fp32
    partials the following add + LayerNorm kernel reduces. Few rows leave most of the GPU idle
    in one GEMM (at 1 x 10 s the (256 x 2048) x (2048 x 256) GEMM ran on 44 CTAs, 5 us).
    $WENET_TRITON_SPLITK overrides the default; "0" or "" turns it off."""
    spec = os.environ.get("WENET_TRITON_SPLITK", SPLITK_DEFAULT) if spec is None else spec
    rules = []
    for item in spec.replace(" ", "").split(","):
        if not item or item == "0":
            continue
        rows, _, n = item.partition(":")
        try:
            rules.append((int(rows), int(n)))
        except ValueError:
            raise ValueError(f"WENET_TRITON_SPLITK: {spec!r} is not rows:S[,rows:S...] (e.g. 512:4,2048:2)")
    return sorted(rules)


# measured on an H200 (benchmarks/small_batch_ab.py, AISHELL FFN 2048 -> 256, fp16, in CUDA
# graphs): GEMM + add_layernorm 7.9 -> 6.3 us at 256 rows (S=4), 8.2 -> 6.8 at 512 (S=4),
# 9.2 -> 7.8 at 1024 (S=2); from 2048 rows one GEMM is faster
SPLITK_DEFAULT = "512:4,1024:2"


class FastModel:
    """Inference-only re-packing of an ASRModel's weights for the GPU."""
    def __init__(self, model: ASRModel, dtype: torch.dtype = torch.float16,
                 device: str = "cuda", use_kernels: Optional[bool] = None, decoder: bool = True,
                 fp8_scales: Optional[Dict] = None):
        """fp8_scales: calibrated activation scales (engines/fp8.py): the encoder's FFNs of
        batches run their GEMMs in e4m3 (opt-in)."""
        self.dtype, self.device = dtype, torch.device(device)
        self.kern = kernels.available() if use_kernels is None else use_kernels
        # Triton-lang kernels (CudaEngine sets these: all but fused_conv on by default)
        self.fused_silu = False  # the FFN's GEMM + bias + SiLU as one kernel (triton_gemm)
        self.fused_ffn = False  # the whole FFN as one kernel, few rows (triton_ffn)
        self.fused_vocab = False  # decoder projection + log-softmax + gather in one (triton_vocab)
        self.fused_conv1 = False  # the first subsampling conv with CMVN and cast (triton_conv)
        self.fused_conv = False  # the later subsampling convs (triton_conv, opt-in)
        self.fused_ctc = False  # CTC projection + log-softmax + top-k in one, batches (triton_ctc)
        # split-K FFN down-projection for few rows, 16-bit only (splitk_policy)
        self.splitk = splitk_policy() if self.kern and dtype != torch.float32 else []
        # decoder attention: cuDNN first (graph-bucketed shapes) or memory-efficient first
        # (shapes that keep changing: cuDNN would plan each one); see sdpa()
        self.dec_cudnn = True
        model = model.fuse().eval()
        if fp8_scales is not None:
            fp8.check_model(fp8_scales, model)
        self.fp8_scales = fp8_scales
        enc = model.encoder
        cv = lambda t: t.detach().to(self.device, dtype).contiguous()  # noqa: E731
        f32 = lambda t: t.detach().to(self.device, torch.float32).contiguous()  # noqa: E731
        self.cmvn = (f32(enc.global_cmvn.mean), f32(enc.global_cmvn.istd)) \
            if enc.global_cmvn is not None else None
        cl = torch.channels_last
        convs = [m for m in enc.embed.conv if isinstance(m, torch.nn.Conv2d)]
        # first conv has one input channel: unfold + one GEMM writing channels-last output
        # (cuDNN ran it as an fp32 GEMM plus layout and dtype conversions)
        c1 = convs[0]
        k1 = c1.kernel_size[0]
        kp = _round_up(k1 * k1, 8)
        self.conv1 = (cv(F.pad(c1.weight.reshape(c1.out_channels, k1 * k1), (0, kp - k1 * k1))),
                      cv(c1.bias), k1, c1.stride[0], kp)
        self.convs = [(cv(m.weight).contiguous(memory_format=cl), cv(m.bias), m.stride)
                      for m in convs[1:]]
        self.layout = enc.embed.layout
        out = enc.embed.out[0]
        # convs run channels-last, so their output flattens as (f, c): reorder the columns
        C = convs[-1].out_channels
        w = out.weight.view(out.out_features, C, -1).transpose(1, 2).reshape(out.out_features, -1)
        self.out_w, self.out_b = cv(w * enc.xscale), cv(out.bias * enc.xscale)
        self.d = enc.d_model
        self.rel_pos = enc.rel_pos
        self.subsampling = enc.embed.subsampling_rate
        self.right_context = enc.embed.right_context
        self.layers = [self._pack_layer(i, L, cv, f32) for i, L in enumerate(enc.encoders)]
        # rel-pos: every layer's linear_pos as one (L*D, D) weight, so the positional rows
        # are projected for all layers by one GEMM per call (layer i: columns i*D..(i+1)*D)
        self.w_pos_all = torch.cat([p["w_pos"] for stages, _ in self.layers
                                    for kind, _, p, _ in stages if kind == "mha"]) \
            if self.rel_pos else None
        self.after_norm = self._ln(enc.after_norm, cv)
        self.vocab = model.ctc.ctc_lo.out_features
        self.ctc_w, self.ctc_b = self._padded(model.ctc.ctc_lo, cv, f32)
        # triton_ctc: the weights in the model dtype, the bias in fp32, unpadded
        self.ctc_w16, self.ctc_b32 = cv(model.ctc.ctc_lo.weight), f32(model.ctc.ctc_lo.bias)
        dec = model.decoder
        self.left = self.right = None  # decoder=False: encoder only (the chunk encoder)
        if decoder:
            self.left = self._pack_decoder(dec.left_decoder if isinstance(dec, BiTransformerDecoder)
                                           else dec, cv, f32)
            self.right = self._pack_decoder(dec.right_decoder, cv, f32) \
                if isinstance(dec, BiTransformerDecoder) else None

    # -- packing -----------------------------------------------------------------------------
    @staticmethod
    def _padded(lin, cv, f32):
        """Vocabulary projection as fp32 copies of the rounded weights, rows padded to a
        multiple of 16 so the GEMM's output leading dimension is aligned."""
        n = lin.out_features
        pad = _round_up(n, 16) - n
        return (F.pad(cv(lin.weight).float(), (0, 0, 0, pad)), F.pad(f32(lin.bias), (0, pad)))

    @staticmethod
    def _ln(m, cv):
        return (cv(m.weight), cv(m.bias), float(m.eps))

    def _ffn(self, m, cv, name: Optional[str] = None):
        """(w1, b1, w2, b2, activation, FP8 pack or None); name: the encoder FFN's name in
        the FP8 scales (engines/fp8.py), when they are given."""
        act = m.activation
        kind = "silu" if isinstance(act, torch.nn.SiLU) else "relu" if isinstance(act, torch.nn.ReLU) \
            else "gelu" if isinstance(act, torch.nn.GELU) else "tanh"
        q8 = fp8.pack(m, self.fp8_scales["ffn"][name], self.device) \
            if self.fp8_scales is not None and name is not None else None
        return (cv(m.w_1.weight), cv(m.w_1.bias), cv(m.w_2.weight), cv(m.w_2.bias), kind, q8)

    @staticmethod
    def _attn(m, cv):
        w = torch.cat([m.linear_q.weight, m.linear_k.weight, m.linear_v.weight])
        zeros = torch.zeros(m.linear_q.out_features)
        b = torch.cat([x.bias if x.bias is not None else zeros
                       for x in (m.linear_q, m.linear_k, m.linear_v)])
        p = {"w_qkv": cv(w), "b_qkv": cv(b), "w_out": cv(m.linear_out.weight),
             "b_out": cv(m.linear_out.bias), "h": m.h, "dk": m.d_k}
        if hasattr(m, "linear_pos"):
            # one GEMM gives, per head, [q+u, q+v] (2*dk), then k and v
            h, dk, D = m.h, m.d_k, m.linear_q.out_features
            wq = m.linear_q.weight.view(h, dk, D)
            bq = b[:D].view(h, dk)
            wq2 = torch.stack([wq, wq], 1).reshape(2 * D, D)
            bq2 = torch.stack([bq + m.pos_bias_u, bq + m.pos_bias_v], 1).reshape(2 * D)
            p.update(w_qkv=cv(torch.cat([wq2, w[D:]])), b_qkv=cv(torch.cat([bq2, b[D:]])),
                     w_pos=cv(m.linear_pos.weight), rel=True)
        return p

    def _pack_layer(self, i, L, cv, f32):
        stages = []
        if L.feed_forward_macaron is not None:
            stages.append(("ffn", self._ln(L.norm_ff_macaron, cv),
                           self._ffn(L.feed_forward_macaron, cv, f"encoders.{i}.feed_forward_macaron"), 0.5))
        stages.append(("mha", self._ln(L.norm_mha if L.conformer else L.norm1, cv), self._attn(L.self_attn, cv), 1.0))
        if L.conv_module is not None:
            cm = L.conv_module
            C = cm.pointwise_conv2.out_channels
            b1 = cm.pointwise_conv1.bias if cm.pointwise_conv1.bias is not None \
                else torch.zeros(2 * C)
            conv = {"pw1_w": cv(cm.pointwise_conv1.weight[:, :, 0]), "pw1_b": cv(b1),
                    "dw_w": f32(cm.depthwise_conv.weight[:, 0, :]),
                    "dw_b": f32(cm.depthwise_conv.bias),
                    # WeNet pads before pointwise_conv1: causal pad frames are glu(bias)
                    "pad": f32(F.glu(b1.float(), dim=0)),
                    "ln_g": f32(cm.norm.weight) if cm.use_layer_norm else None,
                    "ln_b": f32(cm.norm.bias) if cm.use_layer_norm else None,
                    "eps": float(cm.norm.eps) if cm.use_layer_norm else 0.0,
                    "causal": cm.lorder > 0,
                    "pw2_w": cv(cm.pointwise_conv2.weight[:, :, 0]),
                    "pw2_b": cv(cm.pointwise_conv2.bias if cm.pointwise_conv2.bias is not None
                                else torch.zeros(C))}
            stages.append(("conv", self._ln(L.norm_conv, cv), conv, 1.0))
        stages.append(("ffn", self._ln(L.norm_ff if L.conformer else L.norm2, cv),
                       self._ffn(L.feed_forward, cv, f"encoders.{i}.feed_forward"), L.ff_scale))
        final = self._ln(L.norm_final, cv) if L.conv_module is not None else None
        if L.concat_after:
            raise NotImplementedError("concat_after encoders are not supported by the GPU engine")
        return stages, final

    def _pack_decoder(self, dec, cv, f32):
        layers = []
        for L in dec.decoders:
            if L.concat_after or not L.normalize_before:
                raise NotImplementedError("the GPU engine needs normalize_before and no concat_after")
            layers.append((self._ln(L.norm1, cv), self._attn(L.self_attn, cv),
                           self._ln(L.norm2, cv), self._attn(L.src_attn, cv),
                           self._ln(L.norm3, cv), self._ffn(L.feed_forward, cv)))
        out_w, out_b = self._padded(dec.output_layer, cv, f32)
        return {"embed": cv(dec.embed[0].weight), "layers": layers,
                "after_norm": self._ln(dec.after_norm, cv), "out_w": out_w, "out_b": out_b,
                # triton_vocab: the weights in the model dtype, the bias in fp32, unpadded
                "out_w16": cv(dec.output_layer.weight), "out_b32": f32(dec.output_layer.bias)}

    # -- building blocks ---------------------------------------------------------------------
    def ln(self, x, p):
        if self.kern:
            return kernels.layernorm(x, p[0], p[1], p[2])
        return F.layer_norm(x, (x.shape[-1],), p[0], p[1], p[2])

    def add_ln(self, x, delta, alpha, p):
        if isinstance(delta, Parts):
            if self.kern:
                return kernels.add_layernorm_parts(x, delta.parts, delta.bias, alpha, p[0], p[1], p[2])
            delta = kernels.ref_parts_delta(delta.parts, delta.bias, x.dtype)
        if self.kern:
            return kernels.add_layernorm(x, delta, alpha, p[0], p[1], p[2])
        s = x + alpha * delta if alpha != 1.0 else x + delta
        return s, F.layer_norm(s, (s.shape[-1],), p[0], p[1], p[2])

    def add_ln2(self, x, delta, alpha, p1, p2):
        """(z, LN2(z)) with z = LN1(x + alpha*delta): a layer's norm_final and the next norm."""
        if isinstance(delta, Parts):
            if self.kern:
                return kernels.add_layernorm2_parts(x, delta.parts, delta.bias, alpha, p1[0], p1[1], p1[2],
                                                    p2[0], p2[1], p2[2])
            delta = kernels.ref_parts_delta(delta.parts, delta.bias, x.dtype)
        if self.kern:
            return kernels.add_layernorm2(x, delta, alpha, p1[0], p1[1], p1[2], p2[0], p2[1], p2[2])
        _, z = self.add_ln(x, delta, alpha, p1)
        return z, self.ln(z, p2)

    def _split(self, rows: int, k: int) -> int:
        for max_rows, n in self.splitk:
            if rows <= max_rows:
                return n if n > 1 and k % (8 * n) == 0 else 1
        return 1

    def ffn(self, y, p, defer: bool = False):
        """The feed-forward module; defer=True (the caller reduces Parts: add_ln / add_ln2) lets
        the down-projection of few rows run split-K (splitk_policy)."""
        w1, b1, w2, b2, act, q8 = p
        if q8 is not None and fp8.fits(y, q8, act):  # batches, with FP8 scales (opt-in)
            return fp8.ffn(y, q8, b1, b2, act)
        if (self.fused_ffn and defer and y.numel() // y.shape[-1] < triton_ffn.MAX_ROWS
                and kernels.parts_fit(y) and triton_ffn.applies(y, w1, act)):  # few rows, split
            out = triton_ffn.ffn(y, w1, b1, w2, b2, act, can_split=True)
            return Parts(out, b2) if out.dtype != y.dtype else out
        if act == "relu":  # the decoder's FFN (and relu encoders): ReLU in the GEMM's epilogue
            return F.linear(linear_relu(y, w1, b1), w2, b2)
        if act == "silu" and self.fused_silu and triton_gemm.applies(y):  # from MIN_ROWS rows
            return F.linear(triton_gemm.linear_silu(y, w1, b1), w2, b2)
        h = F.linear(y, w1, b1)
        h = F.silu(h) if act == "silu" else F.gelu(h) if act == "gelu" else torch.tanh(h)
        n, k = w2.shape
        S = self._split(h.numel() // k, k) if defer and self.splitk and kernels.parts_fit(y) else 1
        if S > 1:  # (S, rows, K/S) x (S, K/S, N): strided views, no copies; fp32 partials
            a = h.reshape(-1, S, k // S).transpose(0, 1)
            b = w2.view(n, S, k // S).permute(1, 2, 0)
            parts = torch.bmm(a, b, out_dtype=torch.float32) if h.is_cuda else torch.bmm(a.float(), b.float())
            return Parts(parts.view(S, *y.shape[:-1], n), b2)
        return F.linear(h, w2, b2)

    def self_attn(self, y, p, pe_proj, mask, cudnn_first: bool = True, causal: bool = False):
        B, T, D = y.shape
        h, dk = p["h"], p["dk"]
        if p.get("rel"):  # rel-pos: [q+u, q+v] . [k, p], q+u / q+v straight from the GEMM
            out = F.linear(y, p["w_qkv"], p["b_qkv"])
            q = out[..., : 2 * D].view(B, T, h, 2 * dk)
            k = out[..., 2 * D: 3 * D].view(B, T, h, dk)
            v = out[..., 3 * D:].view(B, T, h, dk)
            k = kernels.pack_rel_keys(k, pe_proj) if self.kern else kernels.ref_pack_rel_keys(k, pe_proj)
        else:
            q, k, v = F.linear(y, p["w_qkv"], p["b_qkv"]).view(B, T, 3, h, dk).unbind(2)
        o = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, 1.0 / math.sqrt(dk),
                 cudnn_first=cudnn_first, causal=causal)
        return F.linear(o.transpose(1, 2).reshape(B, T, D), p["w_out"], p["b_out"])

    def conv(self, y, p, lens):
        hdn = F.linear(y, p["pw1_w"], p["pw1_b"])
        fn = kernels.glu_dwconv if self.kern else kernels.ref_glu_dwconv
        g = fn(hdn, lens, p["dw_w"], p["dw_b"], p["pad"], p["ln_g"], p["ln_b"], p["causal"], p["eps"])
        return F.linear(g, p["pw2_w"], p["pw2_b"])

    # -- encoder -----------------------------------------------------------------------------
    def frames_for(self, t_out: int) -> int:
        """Input frames whose subsampled length is exactly t_out."""
        return (t_out - 1) * self.subsampling + self.right_context + 1

    def out_frames(self, frames: int) -> int:
        """The encoder output length of `frames` valid input frames, as encode() counts it
        from the subsampled mask (each (kernel, stride) keeps positions k-1, k-1+s, ...),
        without asking the GPU."""
        n = int(frames)
        for k, s in self.layout:
            n = (n - k) // s + 1 if n >= k else 0
        return n

    def _subsample(self, speech: torch.Tensor, valid: torch.Tensor):
        """CMVN + conv subsampling + output linear (xscale folded in): (B,T,feat) f32 and its
        (B,T) valid mask -> (B,T',D) in the engine dtype and the subsampled mask."""
        w1, b1, k1, s1, kp = self.conv1
        if self.fused_conv1 and triton_conv.applies_first(speech, w1):  # CMVN .. ReLU: one kernel
            x = triton_conv.first_conv_relu(speech, self.cmvn, w1, b1, k1, s1).permute(0, 3, 1, 2)
        else:
            x = speech
            if self.cmvn is not None:
                x = (x - self.cmvn[0]) * self.cmvn[1]
            x = x.to(self.dtype).unfold(1, k1, s1).unfold(2, k1, s1)  # (B,T1,F1,kt,kf)
            x = x.reshape(*x.shape[:3], k1 * k1)
            if kp > k1 * k1:
                x = F.pad(x, (0, kp - k1 * k1))
            x = linear_relu(x, w1, b1).permute(0, 3, 1, 2)  # NCHW view, channels-last memory
        for w, b, s in self.convs:
            if self.fused_conv and triton_conv.applies(x, w, s):
                x = triton_conv.conv2d_relu(x, w, b, s)
            else:
                x = conv2d_relu(x, w, b, s)
        x = F.linear(x.permute(0, 2, 3, 1).flatten(2), self.out_w, self.out_b)
        for k, s in self.layout:
            valid = valid[:, k - 1::s]
        return x, valid

    def _layers(self, x, attn, conv):
        """The encoder layers and after_norm; attn(i, y, p) / conv(i, y, p) compute layer i's
        attention / conv module on its normalized input y (full context or chunk). A layer's
        norm_final and the norm after it (the next layer's first, or after_norm) run as one
        kernel (add_ln2)."""
        y = None
        n = len(self.layers)
        for i, (stages, final) in enumerate(self.layers):
            y = self.ln(x, stages[0][1]) if y is None else y
            nxt = self.layers[i + 1][0][0][1] if i + 1 < n else self.after_norm
            for j, (kind, _, p, scale) in enumerate(stages):
                if kind == "ffn":
                    out = self.ffn(y, p, defer=j + 1 < len(stages) or final is not None)
                elif kind == "mha":
                    out = attn(i, y, p)
                else:
                    out = conv(i, y, p)
                if j + 1 < len(stages):
                    x, y = self.add_ln(x, out, scale, stages[j + 1][1])
                elif final is not None:
                    x, y = self.add_ln2(x, out, scale, final, nxt)
                else:
                    x, y = x + scale * out, None
        return y if y is not None else self.ln(x, self.after_norm)

    def _layer_pos(self, pe):
        """Rel-pos: every layer's linear_pos of the positional rows pe (..., D), one GEMM ->
        per layer a (..., D) view; None without rel-pos."""
        return F.linear(pe, self.w_pos_all).split(self.d, dim=-1) if self.rel_pos else None

    def _ctc_topk(self, x, beam: int, want_logp: bool):
        if self.fused_ctc and not want_logp and triton_ctc.applies(x, beam):  # no logits in memory
            topv, topi = triton_ctc.proj_log_softmax_topk(x, self.ctc_w16, self.ctc_b32, beam)
            return x.new_empty(*x.shape[:-1], 0, dtype=torch.float32), topv, topi
        logits = linear_f32(x, self.ctc_w, self.ctc_b)
        fn = kernels.log_softmax_topk if self.kern else kernels.ref_log_softmax_topk
        return fn(logits, beam, want_logp, self.vocab)

    def encode(self, speech: torch.Tensor, lens: torch.Tensor, beam: int, want_logp: bool = False):
        B, T, _ = speech.shape
        valid = torch.arange(T, device=speech.device)[None, :] < lens[:, None]
        x, valid = self._subsample(speech, valid)
        Tp = x.shape[1]
        out_lens = valid.sum(1).to(torch.int32)
        pe = sinusoid_table(Tp, self.d, x.device, self.dtype)[0]
        if not self.rel_pos:
            x = x + pe
        mask = additive_mask(valid, self.dtype)[:, None, None, :]

        pos = self._layer_pos(pe)

        def attn(i, y, p):
            return self.self_attn(y, p, None if pos is None else pos[i], mask)

        x = self._layers(x, attn, lambda i, y, p: self.conv(y, p, out_lens))
        logp, topv, topi = self._ctc_topk(x, beam, want_logp)
        return x, out_lens, logp, topv, topi

    # -- chunk encoder (live streams) ----------------------------------------------------------
    def _attn_chunk(self, y, p, pos, cache, mask):
        """Self-attention of a chunk over [cache, chunk]: y (B,t,D); cache (B,h,C,2dk) keys |
        values of earlier frames; pos (B,C+t,D) this layer's linear_pos of the keys'
        positional rows (rel-pos; per stream); mask (B,1,1,C+t) additive (0 / -inf).
        -> (out (B,t,D), [cache, chunk] (B,h,C+t,2dk))."""
        B, t, D = y.shape
        h, dk = p["h"], p["dk"]
        out = F.linear(y, p["w_qkv"], p["b_qkv"])
        if p.get("rel"):  # [q+u, q+v] . [k, p] as one attention with head dim 2*dk
            q = out[..., : 2 * D].view(B, t, h, 2 * dk)
            k = out[..., 2 * D: 3 * D].view(B, t, h, dk)
            v = out[..., 3 * D:].view(B, t, h, dk)
        else:
            q, k, v = out.view(B, t, 3, h, dk).unbind(2)
        full = torch.cat([cache, torch.cat([k, v], dim=-1).transpose(1, 2)], dim=2)
        keys = full[..., :dk]
        if p.get("rel"):
            keys = torch.cat([keys, pos.view(B, -1, h, dk).transpose(1, 2)], dim=-1)
        o = sdpa(q.transpose(1, 2), keys.contiguous(), full[..., dk:].contiguous(), mask,
                 1.0 / math.sqrt(dk), tag="chunk")
        return F.linear(o.transpose(1, 2).reshape(B, t, D), p["w_out"], p["b_out"]), full

    def _conv_chunk(self, y, p, cache):
        """Causal conv module continuing from cache (B,lorder,D), the last lorder inputs of
        pointwise_conv1 (norm_conv outputs) before this chunk. pointwise_conv1 + GLU + the
        depthwise conv run over [cache, chunk]; the first lorder outputs (those that would
        see the kernel's causal padding) are dropped, so no padding value enters and, as in
        WeNet's forward_chunk, no padding mask is applied. -> (out (B,t,D), [cache, chunk])."""
        z = torch.cat([cache, y], dim=1)
        lorder = cache.shape[1]
        hdn = F.linear(z, p["pw1_w"], p["pw1_b"])
        every = torch.full((z.shape[0],), z.shape[1], dtype=torch.int32, device=z.device)
        fn = kernels.glu_dwconv if self.kern else kernels.ref_glu_dwconv
        g = fn(hdn, every, p["dw_w"], p["dw_b"], p["pad"], p["ln_g"], p["ln_b"], True, p["eps"])
        return F.linear(g[:, lorder:], p["pw2_w"], p["pw2_b"]), z

    def encode_chunk(self, xs, lens, offset, att_cache, cnn_cache, cache_mask, beam: int):
        """One chunk step of B streams, each at its own offset: `ChunkEncoder.forward` (WeNet
        v2.2.1 forward_chunk) with a finite cache of C frames.

        xs (B,T,feat) f32 raw fbank windows (CMVN inside), lens (B,) int32 valid frames;
        offset (B,) int64 encoder frames each stream has produced; att_cache (B,L,h,C,2dk)
        right-aligned keys | values, cnn_cache (B,L,lorder,D) (time-major: the last lorder
        norm_conv outputs), cache_mask (B,C) bool, all in the engine dtype.
        -> chunk_out (B,t,D), out_lens (B,) int32, top-k log-probs (B,t,beam) f32 and ids
        (B,t,beam) int64, and the next caches in the same layouts: per stream the last C
        (lorder) frames of [cache, its *valid* chunk frames] (what the stream alone gets,
        whatever padding the batch gave its window; padded frames never reach a valid
        output). A stream's offset advances by its out_lens."""
        B, T, _ = xs.shape
        C = att_cache.shape[3]
        valid = torch.arange(T, device=xs.device)[None, :] < lens[:, None]
        x, valid = self._subsample(xs, valid)
        t = x.shape[1]
        out_lens = valid.sum(1).to(torch.int32)
        frames = torch.arange(C + t, device=xs.device)[None, :]
        if self.rel_pos:  # WeNet: rows offset - C + k, negative positions -> row 0
            pe = sinusoid_rows(torch.clamp(offset[:, None] - C + frames, min=0), self.d).to(self.dtype)
        else:
            x = x + sinusoid_rows(offset[:, None] + frames[:, :t], self.d).to(self.dtype)
            pe = None
        key_valid = torch.cat([cache_mask, valid], dim=1)  # (B, C+t)
        mask = additive_mask(key_valid, self.dtype)[:, None, None, :]
        # per stream: the last C frames of [cache, valid chunk frames] start at its out_len
        start = out_lens.to(torch.int64)[:, None]
        new_att, new_cnn = [], []

        def keep(full, n, dim):  # full: (..., C+t or lorder+t on `dim`, ...) -> the last n valid
            idx = start + torch.arange(n, device=xs.device)[None, :]  # (B, n)
            shape = [B] + [1] * (full.dim() - 1)
            shape[dim] = n
            return torch.gather(full, dim, idx.view(shape).expand(
                *full.shape[:dim], n, *full.shape[dim + 1:]))

        pos = self._layer_pos(pe)

        def attn(i, y, p):
            out, full = self._attn_chunk(y, p, None if pos is None else pos[i], att_cache[:, i], mask)
            new_att.append(keep(full, C, 2))
            return out

        def conv(i, y, p):
            out, z = self._conv_chunk(y, p, cnn_cache[:, i])
            new_cnn.append(keep(z, cnn_cache.shape[2], 1))
            return out

        x = self._layers(x, attn, conv)
        _, topv, topi = self._ctc_topk(x, beam, False)
        new_cnn = torch.stack(new_cnn, dim=1) if new_cnn else cnn_cache
        return (x, out_lens, topv, topi, torch.stack(new_att, dim=1), new_cnn,
                keep(key_valid, C, 1))

    # -- decoder -----------------------------------------------------------------------------
    def _dec_scores(self, D, memory_kv, mem_mask, ys_in, ys_out, lens_sos, beam):
        N, L = ys_in.shape
        x = F.embedding(ys_in, D["embed"]) * math.sqrt(self.d) + sinusoid_table(
            L, self.d, ys_in.device, self.dtype)
        # self-attention: WeNet masks keys by (causal & valid); for a valid query i < len every
        # key j <= i is valid, so the causal mask alone gives the same scores there (padded
        # queries, i >= len, see keys 0..i and stay finite; no valid position ever reads them:
        # every later op is per position or causal, and the score gathers valid positions only).
        # No (N, L, L) mask tensor, and the backend skips the blocks above the diagonal.
        y = None
        for i, (n1, sa, n2, ca, n3, ff) in enumerate(D["layers"]):
            y = self.ln(x, n1) if y is None else y
            x, y = self.add_ln(x, self.self_attn(y, sa, None, None, self.dec_cudnn, causal=True), 1.0, n2)
            h, dk = ca["h"], ca["dk"]
            # the beam*L queries of one utterance share its memory: one batch entry each
            q = F.linear(y, ca["w_qkv"][: self.d], ca["b_qkv"][: self.d])
            q = q.view(N // beam, beam * L, h, dk).transpose(1, 2)
            k, v = memory_kv[i]
            o = sdpa(q, k, v, mem_mask, cudnn_first=self.dec_cudnn)
            o = F.linear(o.transpose(1, 2).reshape(N, L, self.d), ca["w_out"], ca["b_out"])
            x, y = self.add_ln(x, o, 1.0, n3)
            out = self.ffn(y, ff, defer=True)  # add_ln below reduces Parts
            if i + 1 < len(D["layers"]):
                x, y = self.add_ln(x, out, 1.0, D["layers"][i + 1][0])
            else:
                _, x = self.add_ln(x, out, 1.0, D["after_norm"])
        if self.fused_vocab and triton_vocab.applies(x):  # no (N, L, V) logits in memory
            return triton_vocab.proj_log_softmax_gather(x, D["out_w16"], D["out_b32"], ys_out, lens_sos).sum(1)
        logits = linear_f32(x, D["out_w"], D["out_b"])
        fn = kernels.log_softmax_gather if self.kern else kernels.ref_log_softmax_gather
        return fn(logits, ys_out, lens_sos, self.vocab).sum(1)

    def _memory_kv(self, D, memory):
        """Cross-attention K/V per layer, once per utterance (not per hypothesis)."""
        B, T, _ = memory.shape
        out = []
        for (_, _, _, ca, _, _) in D["layers"]:
            h, dk = ca["h"], ca["dk"]
            kv = F.linear(memory, ca["w_qkv"][self.d:], ca["b_qkv"][self.d:])
            k, v = kv.view(B, T, 2, h, dk).unbind(2)
            out.append((k.transpose(1, 2), v.transpose(1, 2)))
        return out

    def rescore(self, enc, enc_lens, hyps, hyps_lens, rhyps, ctc_score, ctc_weight, reverse_weight):
        B, beam, L2 = hyps.shape
        T = enc.shape[1]
        memory = enc.to(self.dtype)
        mem_valid = torch.arange(T, device=enc.device)[None, :] < enc_lens[:, None]
        mem_mask = additive_mask(mem_valid[:, None, None, :], self.dtype)
        lens = hyps_lens.reshape(-1)
        flat = hyps.reshape(-1, L2)
        score = self._dec_scores(self.left, self._memory_kv(self.left, memory), mem_mask,
                                 flat[:, :-1], flat[:, 1:], lens, beam)
        if reverse_weight > 0 and self.right is not None:
            rflat = rhyps.reshape(-1, L2)
            r = self._dec_scores(self.right, self._memory_kv(self.right, memory), mem_mask,
                                 rflat[:, :-1], rflat[:, 1:], lens, beam)
            score = score * (1 - reverse_weight) + r * reverse_weight
        score = score.view(B, beam) + ctc_weight * ctc_score
        return torch.argmax(score, dim=1).to(torch.int32), score


class _Graphs:
    """CUDA graphs keyed by input shape, captured on first use; one shared memory pool."""
    def __init__(self, fn, enabled: bool):
        self.fn, self.enabled = fn, enabled
        self.graphs: Dict[Tuple, Tuple] = {}
        self.pool = None

    def __call__(self, key, make_inputs, fill_inputs):
        if not self.enabled:
            inputs = make_inputs()
            fill_inputs(inputs)
            return self.fn(*inputs)
        if key not in self.graphs:
            inputs = make_inputs()
            fill_inputs(inputs)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):  # warm up (cuBLAS handles, SDPA kernel choice)
                    self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(s)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            # thread_local: another thread of the process may wait on a CUDA event meanwhile
            # (the fused model's batches wait for their search and ids outside its GPU lock)
            with torch.cuda.graph(g, pool=self.pool, capture_error_mode="thread_local"):
                outs = self.fn(*inputs)
            self.graphs[key] = (g, inputs, outs)
        g, inputs, outs = self.graphs[key]
        fill_inputs(inputs)
        g.replay()
        return outs


def _on_device(method):
    """Run an engine method with the engine's GPU as the current CUDA device. CUDA graph
    capture and replay, their side stream and pool, and our kernels (launched on
    torch.cuda.current_stream()) follow the current device, not the tensors': an engine on
    cuda:1 must not run them on cuda:0 (one process may hold engines on several GPUs)."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        with torch.cuda.device(self.device):
            return method(self, *args, **kwargs)
    return wrapped


class CudaEngine(Engine):
    """`torch_cuda` engine: FastModel + CUDA graphs over (batch, length) buckets."""
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
    COARSE_FRAMES, COARSE_TOKENS = 64, 16  # smallest coarse decoder buckets

    def __init__(self, model: ASRModel, settings: EngineSettings, device: str = "cuda",
                 dtype: str = "float16", use_kernels: Optional[bool] = None,
                 cuda_graphs: bool = True, time_bucket: int = 16, want_ctc_log_probs: bool = False,
                 decoder_cudnn: bool = True, coarse_decoder_buckets: bool = False,
                 fused_silu: Optional[bool] = None, fused_ffn: Optional[bool] = None,
                 fused_vocab: Optional[bool] = None, fused_conv: Optional[bool] = None,
                 fused_ctc: Optional[bool] = None, fp8_scales: Optional[Dict] = None,
                 fused_conv1: Optional[bool] = None):
        self.settings = settings
        self.device = torch.device(device)
        # FP8 FFNs (opt-in; engines/fp8.py): the scales given, else WENET_TRITON_FP8_SCALES's file
        fp8_scales = fp8_scales if fp8_scales is not None else fp8.scales_from_env()
        self.fm = FastModel(model, DTYPES[dtype or "float16"], device, use_kernels, fp8_scales=fp8_scales)
        # Triton-lang kernels where they apply (CUDA, fp16 / bf16 rows; the `triton` package of
        # PyTorch's CUDA wheels): the FFN's first GEMM + bias + SiLU from triton_gemm.MIN_ROWS
        # rows (triton_gemm), the whole FFN split over its hidden units below
        # triton_ffn.MAX_ROWS (triton_ffn), the decoder's projection + log-softmax + gather
        # (triton_vocab). On by default since 2026-12-03: on an H200 64 x 20 s 68.0k / 68.8k ->
        # 70.8k / 74.0k audio-s/s, served transcripts unchanged
        # (benchmarks/results/h200_2026-12-03b). Also on since session 20 (2026-12-03c): the
        # first subsampling conv with the CMVN and cast (triton_conv.first_conv_relu) and, from
        # triton_ctc.MIN_ROWS frames, the CTC head's projection + log-softmax + top-k
        # (triton_ctc). None: the environment decides, WENET_TRITON_FUSED_SILU / _FFN / _VOCAB
        # / _CONV1 / _CTC=0 turns one off (the model processes inherit `serve`'s environment);
        # False / True: off / on.
        def switch(flag, name, mod, default):
            if flag is None:
                flag = env_switch(name, default)
            return bool(flag) and mod.available()

        self.fm.fused_silu = switch(fused_silu, "WENET_TRITON_FUSED_SILU", triton_gemm, True)
        self.fm.fused_ffn = switch(fused_ffn, "WENET_TRITON_FUSED_FFN", triton_ffn, True)
        self.fm.fused_vocab = switch(fused_vocab, "WENET_TRITON_FUSED_VOCAB", triton_vocab, True)
        self.fm.fused_conv1 = switch(fused_conv1, "WENET_TRITON_FUSED_CONV1", triton_conv, True)
        self.fm.fused_ctc = switch(fused_ctc, "WENET_TRITON_FUSED_CTC", triton_ctc, True)
        # opt-in: the later subsampling convs as an implicit GEMM (triton_conv;
        # WENET_TRITON_FUSED_CONV=1): slower than cuDNN on an H200 (2026-12-03c)
        self.fm.fused_conv = switch(fused_conv, "WENET_TRITON_FUSED_CONV", triton_conv, False)
        self.fm.dec_cudnn = decoder_cudnn  # False: memory-efficient attention first (see sdpa)
        self.beam = settings.beam_size
        self.time_bucket = time_bucket
        # coarse: the decoder's frames and hypothesis lengths padded to powers of two from 64
        # and 16 (a dozen graphs per batch bucket for any mix of lengths up to ~40 s; for
        # callers whose shapes vary without end, e.g. streams' finals: warm_rescore() captures
        # them ahead), else to multiples of time_bucket and of 8
        self.coarse_dec = coarse_decoder_buckets
        self.want_logp = want_ctc_log_probs
        self.enc_graphs = _Graphs(lambda x, l: self.fm.encode(x, l, self.beam, self.want_logp),
                                  cuda_graphs)
        self.dec_graphs = _Graphs(
            lambda e, el, h, hl, rh, c: self.fm.rescore(e, el, h, hl, rh, c, settings.ctc_weight,
                                                        settings.reverse_weight), cuda_graphs)

    def _bucket_batch(self, b: int) -> int:
        for s in self.BATCH_BUCKETS:
            if b <= s:
                return s
        return _round_up(b, self.BATCH_BUCKETS[-1])

    def encoder_key(self, batch: int, frames: int) -> Tuple[int, int]:
        """The encoder graph a (batch, fbank frames) input runs in: (batch bucket, input frames
        of its time bucket, a multiple of time_bucket encoder frames)."""
        t_out = (frames - self.fm.right_context - 1) // self.fm.subsampling + 1
        return self._bucket_batch(batch), self.fm.frames_for(_round_up(max(t_out, 1), self.time_bucket))

    def encoder_keys(self, max_batch: int, max_frames: int, max_rows: int = 0) -> List[Tuple[int, int]]:
        """Every encoder graph key that inputs of up to max_batch utterances and max_frames
        fbank frames can need: each batch bucket up to max_batch's, each time bucket up to
        max_frames's; small inputs first. max_rows > 0: only keys that a batch of at most
        max_rows utterances x encoder frames can need (a server's max_batch_audio_seconds)."""
        top_b, top_t = self.encoder_key(max(1, max_batch), max(1, max_frames))
        batches = [b for b in self.BATCH_BUCKETS if b < top_b] + [top_b]
        fewest = {b: (batches[i - 1] + 1 if i else 1) for i, b in enumerate(batches)}  # least rows in b's bucket
        keys, k = [], 1
        while True:
            t = self.fm.frames_for(k * self.time_bucket)
            keys += [(b, t) for b in batches
                     if max_rows <= 0 or fewest[b] * ((k - 1) * self.time_bucket + 1) <= max_rows]
            if t >= top_t:
                return keys
            k += 1

    @_on_device
    @torch.inference_mode()
    def warm_encoder(self, max_batch: int, max_frames: int, budget_s: float = 60.0,
                     max_rows: int = 0) -> Tuple[int, float]:
        """Capture the encoder's CUDA graphs now (a server's load) for every key of
        encoder_keys(max_batch, max_frames, max_rows), small ones first, until budget_s has passed: a
        capture at first use holds up the batch that needs it (two eager runs and the
        capture) and every batch behind it. -> (graphs captured, seconds)."""
        t0, n = time.perf_counter(), 0
        if not self.enc_graphs.enabled:
            return 0, 0.0
        D = self.settings.input_dim
        for b, t in self.encoder_keys(max_batch, max_frames, max_rows):
            if time.perf_counter() - t0 > budget_s:
                break
            if (b, t) in self.enc_graphs.graphs:
                continue
            speech = torch.zeros(b, t, D, device=self.device)
            self.encode_tensors(speech, torch.full((b,), t, dtype=torch.int32, device=self.device),
                                host_lens=[t] * b)
            n += int((b, t) in self.enc_graphs.graphs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return n, time.perf_counter() - t0

    # tensors in, tensors out (used by the benchmarks and the Triton models on GPU)
    @_on_device
    @torch.inference_mode()
    def encode_tensors(self, speech: torch.Tensor, lens: torch.Tensor, host_lens=None):
        """host_lens: the same frame counts on the host (a sequence of ints), when the caller
        has them: the outputs' length then comes from FastModel.out_frames instead of a
        device-to-host copy, so this call only queues GPU work (no synchronisation)."""
        B, T, D = speech.shape
        Bb, Tb = self.encoder_key(B, T)
        min_len = self.fm.right_context + 1

        def make():
            return (torch.zeros(Bb, Tb, D, device=self.device),
                    torch.full((Bb,), min_len, dtype=torch.int32, device=self.device))

        Tc = min(T, Tb)  # frames past Tb cannot reach any output frame

        def fill(inp):
            x, l = inp
            x.zero_()
            x[:B, :Tc].copy_(speech[:, :Tc], non_blocking=True)
            l.fill_(min_len)
            l[:B].copy_(lens.clamp(max=Tb), non_blocking=True)

        enc, out_lens, logp, topv, topi = self.enc_graphs((Bb, Tb), make, fill)
        if host_lens is not None:  # out_frames never falls as frames grow: the longest one's
            n = self.fm.out_frames(min(max(int(k) for k in host_lens), Tb))
        else:
            n = int(out_lens[:B].max())
        return enc[:B, :n], out_lens[:B], logp[:B, :n], topv[:B, :n], topi[:B, :n]

    @_on_device
    @torch.inference_mode()
    def rescore_tensors(self, enc, enc_lens, hyps, hyps_lens, rhyps, ctc_score):
        B, T, D = enc.shape
        beam, L2 = hyps.shape[1], hyps.shape[2]
        if self.coarse_dec:
            Bb, Tb, Lb = self._bucket_batch(B), _pow2(T, self.COARSE_FRAMES), _pow2(L2, self.COARSE_TOKENS)
        else:
            Bb, Tb, Lb = self._bucket_batch(B), _round_up(T, self.time_bucket), _round_up(L2, 8)
        eos = self.settings.eos

        def make():
            return (torch.zeros(Bb, Tb, D, device=self.device, dtype=self.fm.dtype),
                    torch.ones(Bb, dtype=torch.int32, device=self.device),
                    torch.full((Bb, beam, Lb), eos, dtype=torch.int64, device=self.device),
                    torch.ones(Bb, beam, dtype=torch.int32, device=self.device),
                    torch.full((Bb, beam, Lb), eos, dtype=torch.int64, device=self.device),
                    torch.zeros(Bb, beam, device=self.device))

        def fill(inp):
            e, el, h, hl, rh, c = inp
            e.zero_()
            e[:B, :T].copy_(enc)
            el.fill_(1)
            el[:B].copy_(enc_lens)
            h.fill_(eos)
            h[:B, :, :L2].copy_(hyps)
            hl.fill_(1)
            hl[:B].copy_(hyps_lens)
            rh.fill_(eos)
            rh[:B, :, :L2].copy_(rhyps)
            c.zero_()
            c[:B].copy_(ctc_score)

        best, score = self.dec_graphs((Bb, Tb, Lb, beam), make, fill)
        return best[:B], score[:B]

    def coarse_rescore_shapes(self, max_frames: int, batches=(1, 2, 4), tokens_per_frame: float = 0.25):
        """The coarse decoder buckets (batch, frames, hypothesis length + 2) that finals of up
        to max_frames encoder frames are likely to hit: every frames bucket, hypotheses up to
        tokens_per_frame of its frames (0.25: 6 tokens/s at 40 ms frames), smaller batches
        first."""
        out = []
        for b in batches:
            tb = self.COARSE_FRAMES
            while True:
                lb = self.COARSE_TOKENS
                top = _pow2(int(tb * tokens_per_frame) + 2, self.COARSE_TOKENS)
                while lb <= top:
                    out.append((b, tb, lb))
                    lb *= 2
                if tb >= max_frames:
                    break
                tb *= 2
        return out

    @_on_device
    @torch.inference_mode()
    def warm_rescore(self, shapes, budget_s: float = 60.0) -> Tuple[int, float]:
        """Capture the decoder's CUDA graphs for these (batch, frames, hypothesis length + 2)
        shapes now (a capture at first use stalls the caller: ~20 ms each on an H200), in order, until
        budget_s has passed. Returns (graphs captured, seconds)."""
        t0, n = time.perf_counter(), 0
        D, beam, eos = self.fm.d, self.beam, self.settings.eos
        for b, t, l2 in shapes:
            if time.perf_counter() - t0 > budget_s:
                break
            before = len(self.dec_graphs.graphs)
            enc = torch.zeros(b, t, D, device=self.device)
            hyps = torch.full((b, beam, l2), eos, dtype=torch.int64, device=self.device)
            self.rescore_tensors(enc, torch.full((b,), t, dtype=torch.int32, device=self.device), hyps,
                                 torch.ones(b, beam, dtype=torch.int32, device=self.device), hyps,
                                 torch.zeros(b, beam, device=self.device))
            n += len(self.dec_graphs.graphs) - before
        torch.cuda.synchronize(self.device)
        return n, time.perf_counter() - t0

    def warm_kernels(self, max_rows: int) -> Tuple[int, float]:
        """Tune the autotuned Triton kernels now (a server's load) for every size class of
        encoder rows up to max_rows (batch x encoder frames, as bucketed), so that no live
        batch waits for a tuning (the SiLU GEMM times its tile choices per class of rows on
        first use: ~1 s each). -> (classes run, seconds). Nothing to do without the SiLU GEMM
        (off, fp32, no triton package, not CUDA)."""
        if not self.fm.fused_silu or self.device.type != "cuda" or self.fm.dtype == torch.float32:
            return 0, 0.0
        ffns = [p for stages, _ in self.fm.layers for kind, _, p, _ in stages if kind == "ffn" and p[4] == "silu"]
        shapes = {(tuple(p[0].shape), p[5] is not None) for p in ffns}
        t = time.perf_counter()
        n = sum(triton_gemm.warm(N, K, max_rows, self.device, self.fm.dtype, fp8=q8) for (N, K), q8 in shapes)
        torch.cuda.synchronize(self.device)
        return n, time.perf_counter() - t

    # numpy interface (Engine)
    def encode(self, feats, lens):
        return self.encode_device(torch.from_numpy(np.ascontiguousarray(feats)).to(self.device),
                                  torch.from_numpy(lens.astype(np.int32)).to(self.device))

    def encode_device(self, speech: torch.Tensor, lens: torch.Tensor) -> Dict[str, np.ndarray]:
        """Features already on the GPU (e.g. fbank computed there) -> numpy outputs."""
        res = {}
        for name, t in zip(ENCODER_OUTPUTS, self.encode_tensors(speech, lens)):
            if name == "ctc_log_probs" and not self.want_logp:
                continue
            res[name] = t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
        return res

    def rescore(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos, ctc_score):
        t = lambda a, dt=None: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dt)  # noqa: E731
        best, score = self.rescore_tensors(
            t(encoder_out, torch.float32), t(encoder_out_lens, torch.int32),
            t(hyps_pad_sos_eos, torch.int64), t(hyps_lens_sos, torch.int32),
            t(r_hyps_pad_sos_eos, torch.int64), t(ctc_score, torch.float32))
        return best.cpu().numpy(), score.float().cpu().numpy()
