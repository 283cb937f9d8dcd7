"""Load a WeNet model directory: train.yaml (2021 or v2/v3 style), final.pt, vocab, CMVN.

The result is a plain :class:`ModelSpec` that the model builder, the exporter and the
serving side all read, so every yaml dialect is understood in exactly one place.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

from wenet_triton.contract import FbankConf
from wenet_triton.decode.vocab import VocabError, read_vocab

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A model directory is missing a file or holds something we cannot read."""


@dataclass
class ModelSpec:
    model_dir: str
    encoder_type: str
    encoder_conf: Dict[str, Any]
    decoder_type: str
    decoder_conf: Dict[str, Any]
    input_dim: int
    vocab_size: int
    ctc_weight: float
    reverse_weight: float
    vocab: List[str]
    fbank: FbankConf
    cmvn_mean: Optional[np.ndarray]
    cmvn_istd: Optional[np.ndarray]
    state_dict: Dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def sos(self) -> int:
        return self.vocab_size - 1

    @property
    def eos(self) -> int:
        return self.vocab_size - 1

    @property
    def is_bidirectional(self) -> bool:
        return self.decoder_type == "bitransformer"


def _need(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise CheckpointError(f"{what} not found: {path}")
    return path


def cmvn_from_json(path: str) -> Tuple[np.ndarray, np.ndarray]:
    with open(path) as f:
        try:
            stats = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not JSON CMVN ({e})") from e
    for key in ("mean_stat", "var_stat", "frame_num"):
        if key not in stats:
            raise CheckpointError(f"{path}: JSON CMVN lacks '{key}'")
    return _istd(np.asarray(stats["mean_stat"], np.float64),
                 np.asarray(stats["var_stat"], np.float64), float(stats["frame_num"]))


def cmvn_from_kaldi_text(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Kaldi text-format stats: a 2 x (D+1) matrix, frame count in the last column."""
    with open(path) as f:
        nums = re.findall(r"[-+0-9.eE]+", f.read())
    vals = np.asarray([float(x) for x in nums], np.float64)
    if vals.size % 2:
        raise CheckpointError(f"{path}: cannot parse Kaldi CMVN stats")
    rows = vals.reshape(2, -1)
    count = rows[0, -1]
    return _istd(rows[0, :-1], rows[1, :-1], count)


def _istd(mean_stat, var_stat, count):
    if count <= 0:
        raise CheckpointError("CMVN frame count must be positive")
    mean = mean_stat / count
    var = np.maximum(var_stat / count - mean * mean, 1.0e-20)
    return mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32)


def _fbank_conf(cfg: Dict[str, Any]) -> FbankConf:
    fb = FbankConf()
    ds = cfg.get("dataset_conf") or {}
    conf = ds.get("fbank_conf")
    if conf:  # v2 / v3
        fb.num_mel_bins = int(conf.get("num_mel_bins", fb.num_mel_bins))
        fb.frame_length_ms = float(conf.get("frame_length", fb.frame_length_ms))
        fb.frame_shift_ms = float(conf.get("frame_shift", fb.frame_shift_ms))
        rs = ds.get("resample_conf") or {}
        fb.sample_rate = int(rs.get("resample_rate", fb.sample_rate))
        return fb
    conf = (cfg.get("collate_conf") or {}).get("feature_extraction_conf")
    if conf:  # 2021
        if conf.get("feature_type", "fbank") != "fbank":
            raise CheckpointError(f"feature_type {conf['feature_type']!r} not supported (fbank only)")
        if conf.get("using_pitch"):
            raise CheckpointError("pitch features are not supported")
        fb.num_mel_bins = int(conf.get("mel_bins", fb.num_mel_bins))
        fb.frame_length_ms = float(conf.get("frame_length", fb.frame_length_ms))
        fb.frame_shift_ms = float(conf.get("frame_shift", fb.frame_shift_ms))
        fb.sample_rate = int((cfg.get("dataset_conf") or {}).get("resample_rate", fb.sample_rate))
    return fb


def _find_vocab(model_dir: str, cfg: Dict[str, Any]) -> str:
    names = ["units.txt", "words.txt", "lang_char.txt", "tokens.txt"]
    tok = (cfg.get("tokenizer_conf") or {}).get("symbol_table_path")
    if tok:
        names.insert(0, os.path.basename(tok))
    for n in names:
        p = os.path.join(model_dir, n)
        if os.path.exists(p):
            return p
    raise CheckpointError(f"no vocabulary in {model_dir}: expected one of {', '.join(names)}")


def _cmvn_file(model_dir: str, cfg: Dict[str, Any]) -> Tuple[Optional[str], bool]:
    path = cfg.get("cmvn_file")
    is_json = cfg.get("is_json_cmvn", True)
    cc = cfg.get("cmvn_conf") or {}
    if cc.get("cmvn_file"):
        path, is_json = cc["cmvn_file"], cc.get("is_json_cmvn", True)
    for cand in ([path, os.path.join(model_dir, os.path.basename(path))] if path else []) + [
            os.path.join(model_dir, "global_cmvn")]:
        if cand and os.path.isabs(cand) is False:
            cand = os.path.join(model_dir, cand)
        if cand and os.path.exists(cand):
            return cand, bool(is_json)
    return None, True


def load_model_dir(model_dir: str, checkpoint: str = "final.pt",
                   load_weights: bool = True) -> ModelSpec:
    """Read a WeNet model directory; raise CheckpointError naming anything wrong."""
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"model directory not found: {model_dir}")
    yaml_path = _need(os.path.join(model_dir, "train.yaml"), "train.yaml")
    with open(yaml_path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise CheckpointError(f"{yaml_path}: invalid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{yaml_path}: expected a mapping at top level")
    for key in ("encoder", "encoder_conf", "input_dim", "output_dim"):
        if key not in cfg:
            raise CheckpointError(f"{yaml_path}: missing key '{key}'")

    try:
        vocab = read_vocab(_find_vocab(model_dir, cfg))
    except VocabError as e:
        raise CheckpointError(str(e)) from e
    vocab_size = int(cfg["output_dim"])
    if len(vocab) != vocab_size:
        raise CheckpointError(
            f"vocabulary has {len(vocab)} entries but train.yaml output_dim is {vocab_size}")
    model_conf = cfg.get("model_conf") or {}
    decoder_type = cfg.get("decoder", "transformer")
    spec = ModelSpec(
        model_dir=model_dir,
        encoder_type=cfg["encoder"],
        encoder_conf=dict(cfg["encoder_conf"]),
        decoder_type=decoder_type,
        decoder_conf=dict(cfg.get("decoder_conf") or {}),
        input_dim=int(cfg["input_dim"]),
        vocab_size=vocab_size,
        ctc_weight=float(model_conf.get("ctc_weight", 0.5)),
        reverse_weight=float(model_conf.get("reverse_weight", 0.0))
        if decoder_type == "bitransformer" else 0.0,
        vocab=vocab,
        fbank=_fbank_conf(cfg),
        cmvn_mean=None,
        cmvn_istd=None,
    )
    if spec.fbank.num_mel_bins != spec.input_dim:
        raise CheckpointError(f"fbank has {spec.fbank.num_mel_bins} bins but input_dim is {spec.input_dim}")

    sd: Dict[str, Any] = {}
    if load_weights:
        import torch
        ckpt = _need(os.path.join(model_dir, checkpoint), checkpoint)
        try:
            sd = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types here
            raise CheckpointError(f"{ckpt}: cannot load ({e})") from e
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{ckpt}: expected a state_dict")
        spec.state_dict = sd

    # CMVN: buffers inside final.pt win (WeNet loads them over the JSON-initialised ones).
    if "encoder.global_cmvn.mean" in sd:
        spec.cmvn_mean = sd["encoder.global_cmvn.mean"].float().numpy()
        spec.cmvn_istd = sd["encoder.global_cmvn.istd"].float().numpy()
    else:
        path, is_json = _cmvn_file(model_dir, cfg)
        if path:
            spec.cmvn_mean, spec.cmvn_istd = (
                cmvn_from_json(path) if is_json else cmvn_from_kaldi_text(path))
        elif cfg.get("cmvn_file") or cfg.get("cmvn"):
            raise CheckpointError(f"train.yaml names a CMVN file but none is in {model_dir}")
        else:
            log.warning("no global CMVN in %s: features are used unnormalised", model_dir)
    if spec.cmvn_mean is not None and spec.cmvn_mean.shape[0] != spec.input_dim:
        raise CheckpointError(f"CMVN has dim {spec.cmvn_mean.shape[0]}, input_dim is {spec.input_dim}")
    return spec
