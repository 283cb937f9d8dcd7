"""Random-weight models of known shapes (no checkpoint to carry): the benchmarks' AISHELL-1
conformer and the shared test model's U2++ shape, savable as WeNet model directories."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from wenet_triton.contract import FbankConf
from wenet_triton.model.checkpoint import ModelSpec
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.train import write_model_dir

# WeNet's AISHELL conformer shape (12 x 256, ffn 2048, 4 heads, kernel 15, vocab 4233)
AISHELL = {
    "encoder": "conformer",
    "encoder_conf": {"output_size": 256, "attention_heads": 4, "linear_units": 2048,
                     "num_blocks": 12, "cnn_module_kernel": 15, "pos_enc_layer_type": "rel_pos",
                     "selfattention_layer_type": "rel_selfattn", "input_layer": "conv2d",
                     "normalize_before": True, "activation_type": "swish",
                     "cnn_module_norm": "batch_norm", "causal": False},
    "decoder": "transformer",
    "decoder_conf": {"attention_heads": 4, "linear_units": 2048, "num_blocks": 6},
    "vocab_size": 4233, "ctc_weight": 0.5, "reverse_weight": 0.0,
}


# U2++ shape of the shared test model: causal conv, layer_norm conv, bitransformer decoder
U2PP = {
    "encoder": "conformer",
    "encoder_conf": {"output_size": 256, "attention_heads": 4, "linear_units": 1024,
                     "num_blocks": 6, "cnn_module_kernel": 8, "pos_enc_layer_type": "rel_pos",
                     "input_layer": "conv2d", "normalize_before": True, "activation_type": "swish",
                     "cnn_module_norm": "layer_norm", "causal": True},
    "decoder": "bitransformer",
    "decoder_conf": {"attention_heads": 4, "linear_units": 1024, "num_blocks": 2, "r_num_blocks": 1},
    "vocab_size": 3003, "ctc_weight": 0.3, "reverse_weight": 0.3,
}


def random_spec(cfg: Dict = AISHELL, seed: int = 0) -> ModelSpec:
    """A random-weight model of a given shape (no checkpoint to carry)."""
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    spec = ModelSpec(model_dir="<random>", encoder_type=cfg["encoder"],
                     encoder_conf=dict(cfg["encoder_conf"]), decoder_type=cfg["decoder"],
                     decoder_conf=dict(cfg["decoder_conf"]), input_dim=80, vocab_size=V,
                     ctc_weight=cfg["ctc_weight"], reverse_weight=cfg["reverse_weight"],
                     vocab=[f"t{i}" for i in range(V)], fbank=FbankConf(),
                     cmvn_mean=(torch.rand(80, generator=g) * 4 + 10).numpy(),
                     cmvn_istd=(torch.rand(80, generator=g) * 0.5 + 0.2).numpy())
    torch.manual_seed(seed)
    model = ASRModel(spec)
    sd = model.state_dict()
    for k, v in sd.items():  # randomize norms so nothing is an identity
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean") or (k.endswith(".bias") and "norm" in k):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        elif "norm" in k and k.endswith(".weight"):
            sd[k] = 1 + torch.randn(v.shape, generator=g) * 0.1
    spec.state_dict = sd
    return spec


def save_spec(spec: ModelSpec, out: str) -> str:
    """Save a (random) spec as a WeNet model directory: train.yaml, final.pt, units.txt,
    global_cmvn, loadable by the project's loader and by WeNet's code alike."""
    cfg = {"encoder": spec.encoder_type, "encoder_conf": spec.encoder_conf,
           "decoder": spec.decoder_type, "decoder_conf": spec.decoder_conf,
           "model_conf": {"ctc_weight": spec.ctc_weight, "reverse_weight": spec.reverse_weight},
           "input_dim": spec.input_dim, "is_json_cmvn": True, "cmvn_file": "global_cmvn",
           "dataset_conf": {"fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25}}}
    sd = dict(spec.state_dict)
    sd["encoder.global_cmvn.mean"] = torch.from_numpy(spec.cmvn_mean)
    sd["encoder.global_cmvn.istd"] = torch.from_numpy(spec.cmvn_istd)
    n = 1000.0  # JSON stats reproducing mean/istd
    mean = spec.cmvn_mean.astype(np.float64)
    var = 1.0 / spec.cmvn_istd.astype(np.float64) ** 2
    cmvn = {"mean_stat": (mean * n).tolist(), "var_stat": ((var + mean ** 2) * n).tolist(),
            "frame_num": n}
    units = ["<blank>", "<unk>"] + spec.vocab[2:-1] + ["<sos/eos>"]
    return write_model_dir(out, cfg, units, cmvn, sd)
