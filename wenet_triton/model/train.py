"""Training with WeNet's U2/U2++ objective, for the demo model (recipes/demo_zh_synth/train_demo.py).

CTC + attention loss (label smoothing; the right-to-left decoder of U2++ with
`reverse_weight`), SpecAugment, WeNet's dynamic chunk, and model directories in WeNet's
format: train.yaml, final.pt with WeNet's state_dict names, units.txt, global_cmvn (JSON).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import yaml

from wenet_triton.decode.search import ctc_greedy
from wenet_triton.model.conformer import ASRModel

# U2++ conformer for the synthetic-Mandarin demo: d=192 keeps the fp16 checkpoint < 25 MB
# with a 3003-unit vocabulary (four 3003 x d embedding/output tables plus the CTC layer).
DEMO_CONFIG: Dict = {
    "encoder": "conformer",
    "encoder_conf": {
        "output_size": 192, "attention_heads": 4, "linear_units": 768, "num_blocks": 6,
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.0,
        "input_layer": "conv2d", "normalize_before": True, "use_cnn_module": True,
        "activation_type": "swish", "pos_enc_layer_type": "rel_pos",
        "selfattention_layer_type": "rel_selfattn", "cnn_module_kernel": 15, "causal": True,
        "cnn_module_norm": "layer_norm", "use_dynamic_chunk": True,
        "use_dynamic_left_chunk": False,
    },
    "decoder": "bitransformer",
    "decoder_conf": {
        "attention_heads": 4, "linear_units": 768, "num_blocks": 2, "r_num_blocks": 1,
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0,
    },
    "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False,
                   "reverse_weight": 0.3},
    "input_dim": 80,
    "dataset_conf": {
        "fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 0.0},
        "resample_conf": {"resample_rate": 16000},
        "spec_aug_conf": {"num_t_mask": 2, "num_f_mask": 2, "max_t": 50, "max_f": 10},
    },
    "cmvn_file": "global_cmvn",
    "is_json_cmvn": True,
}


def cmvn_stats(feats: Sequence[torch.Tensor]) -> Dict:
    """WeNet's JSON global_cmvn statistics over (T, D) feature matrices."""
    mean = var = None
    n = 0
    for f in feats:
        f = f.double()
        s, s2 = f.sum(0), (f * f).sum(0)
        mean = s if mean is None else mean + s
        var = s2 if var is None else var + s2
        n += f.shape[0]
    return {"mean_stat": mean.tolist(), "var_stat": var.tolist(), "frame_num": n}


def write_model_dir(out_dir: str, config: Dict, units: Union[str, Sequence[str]], cmvn: Dict,
                    state_dict: Optional[Dict[str, torch.Tensor]] = None,
                    half: bool = False) -> str:
    """Write a WeNet model directory (train.yaml, units.txt, global_cmvn JSON, final.pt),
    loadable by this project's loader and by WeNet's code alike. `units`: a units.txt path
    or the tokens by id. With `half`, weights are stored fp16 (CMVN stays fp32)."""
    os.makedirs(out_dir, exist_ok=True)
    units_out = os.path.join(out_dir, "units.txt")
    if isinstance(units, str):
        vocab = sum(1 for line in open(units, encoding="utf-8") if line.strip())
        if os.path.abspath(units) != os.path.abspath(units_out):
            shutil.copyfile(units, units_out)
    else:
        vocab = len(units)
        with open(units_out, "w", encoding="utf-8") as f:
            f.writelines(f"{tok} {i}\n" for i, tok in enumerate(units))
    cfg = dict(config, output_dim=vocab)
    with open(os.path.join(out_dir, "train.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    with open(os.path.join(out_dir, "global_cmvn"), "w") as f:
        json.dump(cmvn, f)
    if state_dict is not None:
        sd = {k: (v.half() if half and v.is_floating_point() and "global_cmvn" not in k else v)
              .detach().cpu().contiguous() for k, v in state_dict.items()}
        torch.save(sd, os.path.join(out_dir, "final.pt"))
    return out_dir


def dynamic_chunk_size(frames: int, generator: torch.Generator) -> int:
    """WeNet's dynamic chunk draw: about half the batches full context (0), else 1..25."""
    if frames < 2:
        return 0
    c = int(torch.randint(1, frames, (1,), generator=generator))
    return 0 if c > frames // 2 else c % 25 + 1


def spec_augment(feats: torch.Tensor, lens: torch.Tensor, fill: torch.Tensor,
                 generator: torch.Generator, num_f: int = 2, max_f: int = 10,
                 num_t: int = 2, max_t: int = 50) -> torch.Tensor:
    """Frequency and time masks per utterance on a padded (B, T, D) batch, set to `fill`
    (the CMVN mean, i.e. 0 after normalisation)."""
    B, T, D = feats.shape
    dev = feats.device
    r = lambda *s: torch.rand(*s, generator=generator).to(dev)  # noqa: E731
    masked = torch.zeros(B, T, D, dtype=torch.bool, device=dev)
    fidx = torch.arange(D, device=dev)
    for _ in range(num_f):
        w = (r(B) * (max_f + 1)).long()
        start = (r(B) * (D - w + 1).float()).long()
        masked |= ((fidx >= start[:, None]) & (fidx < (start + w)[:, None]))[:, None, :]
    tidx = torch.arange(T, device=dev)
    for _ in range(num_t):
        w = 1 + (r(B) * max_t).long()
        start = (r(B) * lens.float()).long()
        masked |= ((tidx >= start[:, None]) & (tidx < (start + w)[:, None]))[:, :, None]
    return torch.where(masked, fill.to(feats.dtype), feats)


def decoder_targets(ys: List[torch.Tensor], sos: int, eos: int, reverse: bool = False):
    """-> ys_in (N, L+1) `<sos> y` padded with eos, ys_out (N, L+1) `y <eos>` padded -1,
    lengths L+1. With `reverse`, each y is reversed first (U2++ right-to-left decoder)."""
    if reverse:
        ys = [y.flip(0) for y in ys]
    dev = ys[0].device
    s = torch.tensor([sos], device=dev)
    e = torch.tensor([eos], device=dev)
    ys_in = torch.nn.utils.rnn.pad_sequence([torch.cat([s, y]) for y in ys], batch_first=True,
                                            padding_value=eos)
    ys_out = torch.nn.utils.rnn.pad_sequence([torch.cat([y, e]) for y in ys], batch_first=True,
                                             padding_value=-1)
    lens = torch.tensor([len(y) + 1 for y in ys], device=dev)
    return ys_in, ys_out, lens


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Sum over tokens of KL(smoothed one-hot || softmax(logits)) as in WeNet; -1 = ignore."""
    V = logits.size(-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    valid = target >= 0
    t = target.clamp(min=0)
    conf, other = 1.0 - smoothing, smoothing / (V - 1)
    lp_t = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    cross = conf * lp_t + other * (logp.sum(-1) - lp_t)
    const = conf * math.log(conf) + (smoothing * math.log(other) if smoothing > 0 else 0.0)
    return ((const - cross) * valid).sum()


def u2_loss(model: ASRModel, feats: torch.Tensor, lens: torch.Tensor, ys: List[torch.Tensor],
            ctc_weight: float, reverse_weight: float, lsm: float, chunk_size: int = 0) -> Dict:
    """WeNet's loss: ctc_weight * CTC + (1 - ctc_weight) * attention, each summed over the
    batch and divided by its size (length_normalized_loss: false)."""
    B = feats.size(0)
    enc, enc_lens = model.encoder(feats, lens, chunk_size)
    logp = model.ctc.log_softmax(enc)
    ys_lens = torch.tensor([len(y) for y in ys], device=feats.device)
    ctc = F.ctc_loss(logp.transpose(0, 1), torch.cat(ys), enc_lens.long(), ys_lens,
                     blank=0, reduction="sum", zero_infinity=True) / B
    sos = eos = model.spec.eos
    ys_in, ys_out, in_lens = decoder_targets(ys, sos, eos)
    att = label_smoothing_loss(model.decoder_logits(enc, enc_lens, ys_in, in_lens), ys_out, lsm) / B
    if reverse_weight > 0:
        r_in, r_out, _ = decoder_targets(ys, sos, eos, reverse=True)
        r_att = label_smoothing_loss(
            model.decoder_logits(enc, enc_lens, r_in, in_lens, reverse=True), r_out, lsm) / B
        att = (1 - reverse_weight) * att + reverse_weight * r_att
    loss = ctc_weight * ctc + (1 - ctc_weight) * att
    return {"loss": loss, "ctc": ctc.detach(), "att": att.detach()}


@torch.no_grad()
def greedy_ids(model: ASRModel, feats: torch.Tensor, lens: torch.Tensor) -> List[List[int]]:
    enc, enc_lens = model.encoder(feats, lens)
    best = model.ctc.log_softmax(enc).argmax(-1, keepdim=True).cpu().numpy()  # (B, T, 1)
    return [ctc_greedy(row, n) for row, n in zip(best, enc_lens.tolist())]


def warmup_cosine(progress: float, step: int, peak: float, warmup: int,
                  floor: float = 0.02) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to floor*peak as `progress`
    (the fraction of the training budget used) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
