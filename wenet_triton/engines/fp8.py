"""FP8 (e4m3) feed-forward modules for the encoder on Hopper GPUs: calibration, the
reference simulation, and the engine's path (opt-in).

The encoder's FFNs hold most of its arithmetic (AISHELL: 2 x 2 x 256 x 2048 of ~2.6 M
multiply-adds per frame and layer). Here each FFN's two GEMMs take e4m3 operands:
- weights: one scale per matrix, amax(|W|) / 448;
- activations: one static scale per tensor, calibrated: the largest |value| of the FFN's input
  (the LayerNorm output) and of its hidden units (after SiLU) over real fbank of calibration
  audio, / 448 (values beyond are clamped to +-448, e4m3's largest);
- products summed in fp32, the output in the model's dtype with b2 added.
On the GPU: the input quantized by one elementwise pass, the first GEMM + scale + bias +
SiLU + quantization of the hidden units in one Triton kernel (triton_gemm.linear_silu with
fp8 operands: the hidden tensor is written once, in one byte per value), the second GEMM by
cuBLAS (torch._scaled_mm, b2 in its epilogue). Without Triton: torch._scaled_mm for both,
SiLU and quantization between them.

`simulate()` runs the same arithmetic on the PyTorch reference model (operands rounded to
e4m3 and back, products in fp32) on any device: the CER effect of FP8 can be measured on the
CPU (benchmarks/fp8_cer.py; tests/test_fp8.py holds it to the issue's bar, <= 0.1 absolute
on synth_test), apart from the order of the fp32 sums.

Opt-in: `wenet-triton calibrate-fp8` writes a scales JSON; WENET_TRITON_FP8_SCALES=<file>
(or CudaEngine(fp8_scales=...)) turns it on for FFNs of at least MIN_ROWS rows (batches;
one utterance keeps the fused 16-bit FFN, triton_ffn).

Measured (2026-12-03, one H200, benchmarks/results/h200_2026-12-03c):
- accuracy, demo model, default decoding, scales from 20 synth_test utterances, CER over the
  other 80: fp16 9.899 % -> FP8 9.732 % on the GPU (78 / 80 transcripts unchanged), the CPU
  simulation the same 9.732 % (76 / 80): within the issue's bar (<= 0.1 points lost);
- speed, AISHELL shape (d 256, FFN 2048): no gain. The FFN + add + LayerNorm at 32,768 rows
  took 258 us against 204 for the 16-bit SiLU GEMM + cuBLAS (240 for cuBLAS + SiLU), 40 vs
  31 us at 4,096; the engine at 64 x 20 s 70.4k vs 76.1-76.4k audio-s/s. The input's
  quantization pass, the per-slice promotion of the FP8 sums (without it 224 us, but sums
  drifted beyond one e4m3 step) and the small K / N of this model's GEMMs eat what the FP8
  tensor cores save; a larger model (d 512+, FFN 2048+) or the quantization fused into the
  LayerNorm kernel before it may change that. Hence off by default.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from wenet_triton.engines import triton_gemm
from wenet_triton.model.conformer import ExportEncoder, PositionwiseFeedForward

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
FORMAT = "wenet-triton fp8 scales v1"
# the engine takes the FP8 path from this many rows (a batch); fewer rows keep 16 bits
MIN_ROWS = int(os.environ.get("WENET_TRITON_FP8_MIN_ROWS", "1024"))


def ffn_modules(model) -> List[Tuple[str, PositionwiseFeedForward]]:
    """The encoder's FFN modules with their names, in the order the GPU engine packs them
    (per layer: the macaron FFN, if any, then the second)."""
    out = []
    for i, L in enumerate(model.encoder.encoders):
        for attr in ("feed_forward_macaron", "feed_forward"):
            m = getattr(L, attr, None)
            if isinstance(m, PositionwiseFeedForward):
                out.append((f"encoders.{i}.{attr}", m))
    return out


def weight_scale(w: torch.Tensor) -> float:
    """One scale for a weight matrix: its largest |value| maps to e4m3's largest."""
    a = float(w.detach().abs().max())
    return a / E4M3_MAX if a > 0 else 1.0


def act_scale(amax: float) -> float:
    return amax / E4M3_MAX if amax > 0 and math.isfinite(amax) else 1.0


def quantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale, clamped to +-448, rounded to e4m3."""
    return (x.float() * (1.0 / scale)).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)


def fake_quant(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x rounded through e4m3 at `scale` and back (fp32): the values an FP8 GEMM sees."""
    return quantize(x, scale).float() * scale


# -- calibration ---------------------------------------------------------------------------
@torch.inference_mode()
def calibrate(model, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
              device: str = "cpu") -> Dict:
    """Run the encoder over (feats (B, T, 80) fp32, lens (B,)) batches and record, per FFN,
    the largest |value| of its input and of its hidden units -> the scales dict (save())."""
    model = model.to(device).eval()
    amax: Dict[str, List[float]] = {name: [0.0, 0.0] for name, _ in ffn_modules(model)}
    hooks = []
    for name, m in ffn_modules(model):
        def rec(slot, name=name):
            def hook(_mod, args):
                amax[name][slot] = max(amax[name][slot], float(args[0].detach().abs().max()))
            return hook
        hooks += [m.w_1.register_forward_pre_hook(rec(0)), m.w_2.register_forward_pre_hook(rec(1))]
    enc = ExportEncoder(model, 1)
    n = frames = 0
    try:
        for feats, lens in batches:
            enc(feats.to(device, torch.float32), lens.to(device, torch.int32))
            n += int(feats.shape[0])
            frames += int(lens.sum())
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError("FP8 calibration: no audio given")
    return {"format": FORMAT, "utterances": n, "frames": frames, "ffn": amax}


def save(scales: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(scales, f, indent=1)


def load(path: str) -> Dict:
    """A scales file written by save() / `wenet-triton calibrate-fp8`; a clear error otherwise."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"FP8 scales {path}: cannot read it ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("ffn"), dict):
        raise ValueError(f"FP8 scales {path}: not a {FORMAT!r} file (make one with `wenet-triton calibrate-fp8`)")
    return d


def check_model(scales: Dict, model) -> None:
    """The scales must name exactly the model's FFNs."""
    names = [n for n, _ in ffn_modules(model)]
    have = scales["ffn"]
    missing = [n for n in names if n not in have]
    if missing or len(have) != len(names):
        raise ValueError(f"FP8 scales do not fit this model: {len(have)} FFNs in the file, {len(names)} in the "
                         f"model (missing e.g. {missing[:2]}); calibrate them for this checkpoint")


# -- the reference simulation ----------------------------------------------------------------
def _simulated_forward(m: PositionwiseFeedForward, sx: float, sh: float):
    w1 = fake_quant(m.w_1.weight, weight_scale(m.w_1.weight))
    w2 = fake_quant(m.w_2.weight, weight_scale(m.w_2.weight))

    def forward(x):
        h = F.linear(fake_quant(x, sx), w1.to(x.device), m.w_1.bias.float())
        h = fake_quant(m.activation(h), sh)
        return F.linear(h, w2.to(x.device), m.w_2.bias.float()).to(x.dtype)
    return forward


@contextlib.contextmanager
def simulate(model, scales: Dict) -> Iterator[None]:
    """Within: the reference model's encoder FFNs compute as the FP8 path does (operands
    rounded to e4m3 at the calibrated scales, fp32 sums)."""
    check_model(scales, model)
    mods = ffn_modules(model)
    for name, m in mods:
        ax, ah = scales["ffn"][name]
        m.forward = _simulated_forward(m, act_scale(ax), act_scale(ah))
    try:
        yield
    finally:
        for _, m in mods:
            del m.forward  # back to the class's forward


# -- the engine's path -----------------------------------------------------------------------
class Fp8Ffn(NamedTuple):
    w1: torch.Tensor  # (H, d) e4m3
    w2: torch.Tensor  # (d, H) e4m3
    sx: float  # input scale
    sw1: float
    sh: float  # hidden scale
    sw2: float
    t_sx: torch.Tensor  # the same scales as 0-dim fp32 tensors (torch._scaled_mm)
    t_sw1: torch.Tensor
    t_sh: torch.Tensor
    t_sw2: torch.Tensor


def pack(m: PositionwiseFeedForward, amax: Tuple[float, float], device) -> Fp8Ffn:
    """An FFN module's e4m3 weights and scales; amax: its calibrated (input, hidden) maxima."""
    return pack_weights(m.w_1.weight.detach(), m.w_2.weight.detach(), amax, device)


def pack_weights(w1: torch.Tensor, w2: torch.Tensor, amax: Tuple[float, float], device) -> Fp8Ffn:
    sw1, sw2 = weight_scale(w1), weight_scale(w2)
    sx, sh = act_scale(float(amax[0])), act_scale(float(amax[1]))

    def t(v):
        return torch.tensor(v, dtype=torch.float32, device=device)
    return Fp8Ffn(quantize(w1.to(device), sw1).contiguous(), quantize(w2.to(device), sw2).contiguous(),
                  sx, sw1, sh, sw2, t(sx), t(sw1), t(sh), t(sw2))


def fits(x: torch.Tensor, q: Fp8Ffn, act: str) -> bool:
    """Whether ffn() takes these rows: SiLU (or ReLU) FFNs whose sizes suit the FP8 GEMMs
    (multiples of 16), on an FP8-capable GPU (compute capability 8.9+) or the CPU."""
    if act not in ("silu", "relu") or x.shape[-1] % 16 or q.w1.shape[0] % 16:
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9):
        return False
    return x.numel() // x.shape[-1] >= MIN_ROWS


def ffn(x: torch.Tensor, q: Fp8Ffn, b1: torch.Tensor, b2: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """act(x @ W1.T + b1) @ W2.T + b2 with e4m3 operands (see the module's doc), in x's dtype."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    xq = quantize(x2, q.sx)
    if act == "silu" and triton_gemm.fp8_applies(x2):
        hq = triton_gemm.linear_silu(xq, q.w1, b1, scale=q.sx * q.sw1, out_scale=q.sh)
    else:
        h = torch._scaled_mm(xq, q.w1.t(), scale_a=q.t_sx, scale_b=q.t_sw1, out_dtype=torch.float32)
        h = h + b1.float()
        hq = quantize(F.silu(h) if act == "silu" else F.relu(h), q.sh)
    y = torch._scaled_mm(hq, q.w2.t(), scale_a=q.t_sh, scale_b=q.t_sw2, bias=b2.to(x.dtype), out_dtype=x.dtype)
    return y.view(*x.shape[:-1], y.shape[-1])


def feats_batches(feats: List[np.ndarray], batch: int = 1) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(T_i, 80) fbank arrays -> zero-padded (feats, lens) batches for calibrate(); batch 1
    (the default) pads nothing: padded frames would widen the ranges calibrate() records."""
    for i in range(0, len(feats), batch):
        part = feats[i:i + batch]
        T = max(f.shape[0] for f in part)
        x = np.zeros((len(part), T, part[0].shape[1]), np.float32)
        for j, f in enumerate(part):
            x[j, :f.shape[0]] = f
        yield torch.from_numpy(x), torch.tensor([f.shape[0] for f in part], dtype=torch.int32)


def scales_from_env() -> Optional[Dict]:
    """The scales WENET_TRITON_FP8_SCALES names (the FP8 FFNs on), or None (off)."""
    path = os.environ.get("WENET_TRITON_FP8_SCALES", "").strip()
    return load(path) if path else None
