"""The I/O contract every layer shares: tensor names of the exported engines (WeNet's GPU
export), the engine settings written beside them, and the fbank configuration.

Pure Python (no torch, no onnx): the serving side, the client and the tests read it
without loading a model. Everything that writes or reads `wenet_triton.json` goes through
:class:`EngineSettings`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

CONFIG_NAME = "wenet_triton.json"
# bytes per element of Triton's tensor data types (the names after TYPE_ in a config.pbtxt)
TRITON_DTYPE_BYTES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1,
                      "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8}

# Engines that run an exported model; `tensorrt` plans are built from the ONNX export.
ENGINES = ("onnxruntime", "torch", "torch_cuda")
REPO_ENGINES = ENGINES + ("tensorrt",)

# Full-context encoder (WeNet's export_onnx_gpu.py names).
ENCODER_INPUTS = ["speech", "speech_lengths"]
ENCODER_OUTPUTS = ["encoder_out", "encoder_out_lens", "ctc_log_probs", "beam_log_probs",
                   "beam_log_probs_idx"]
DECODER_OUTPUTS = ["best_index", "score"]
# Chunk (streaming) encoder: the StreamingEncoder wrapper of WeNet's export_onnx_gpu.py.
STREAMING_ENCODER_INPUTS = ["chunk_xs", "chunk_lens", "offset", "att_cache", "cnn_cache",
                            "cache_mask"]
STREAMING_ENCODER_OUTPUTS = ["log_probs", "log_probs_idx", "chunk_out", "chunk_out_lens",
                             "r_offset", "r_att_cache", "r_cnn_cache", "r_cache_mask"]


def streaming_encoder_io(settings: Dict):
    """Chunk encoder (inputs, outputs); an encoder without conv modules (transformer) has no
    cnn_cache / r_cnn_cache, as in WeNet's export."""
    ins, outs = list(STREAMING_ENCODER_INPUTS), list(STREAMING_ENCODER_OUTPUTS)
    if not settings.get("cnn_module_kernel_cache", 1):
        ins.remove("cnn_cache")
        outs.remove("r_cnn_cache")
    return ins, outs


@dataclass
class FbankConf:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000


def min_samples(conf: FbankConf) -> int:
    """Fewest samples that give one fbank frame."""
    return int(conf.sample_rate * conf.frame_length_ms / 1000)


def num_frames(conf: FbankConf, n_samples: int) -> int:
    """Fbank frames of n_samples (Kaldi's snip_edges)."""
    win, shift = min_samples(conf), int(conf.sample_rate * conf.frame_shift_ms / 1000)
    return 0 if n_samples < win else 1 + (n_samples - win) // shift


def in_unit_range(w) -> bool:
    """Every sample of a non-empty waveform (a numpy array) in [-1, 1], the float audio the
    models take, in two passes without copies (NaN fails the comparisons): the common case,
    which the checks that name a problem (check_waveform, check_amplitude) need not look at."""
    return bool(w.max() <= 1.0 and w.min() >= -1.0)


@dataclass
class EngineSettings:
    """What an export fixes: n-best size, rescoring weights, token ids and shapes.

    Saved as `wenet_triton.json` in every engine directory; unknown keys in a file (from a
    newer version) are kept in `extra` and written back unchanged."""
    beam_size: int
    ctc_weight: float
    reverse_weight: float
    sos: int
    eos: int
    vocab_size: int
    decoder_has_reverse_input: bool
    blank: int = 0
    output_size: int = 256
    input_dim: int = 80
    subsampling_rate: int = 4
    right_context: int = 6
    fbank: FbankConf = field(default_factory=FbankConf)
    encoder_type: str = "conformer"
    decoder_type: str = "transformer"
    vocab_file: str = "units.txt"
    source_model_dir: str = ""
    fingerprint: Optional[str] = None
    verification: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def min_frames(self) -> int:
        """Fewest fbank frames that give one encoder frame."""
        return self.right_context + 1

    def decoder_io(self) -> Tuple[List[str], List[str]]:
        """(input names, output names) of decoder.onnx; `r_hyps_pad_sos_eos` only when the
        reverse decoder takes part (reverse_weight > 0)."""
        ins = ["encoder_out", "encoder_out_lens", "hyps_pad_sos_eos", "hyps_lens_sos"]
        if self.decoder_has_reverse_input:
            ins.append("r_hyps_pad_sos_eos")
        ins.append("ctc_score")
        return ins, list(DECODER_OUTPUTS)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        for k in ("fingerprint", "verification"):
            if d[k] is None:
                del d[k]
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EngineSettings":
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("fbank"), dict):
            kw["fbank"] = FbankConf(**kw["fbank"])
        try:
            return cls(**kw, extra={k: v for k, v in d.items() if k not in known})
        except TypeError as e:  # a required field is missing
            raise ValueError(f"engine settings incomplete ({e}); export again") from e

    @classmethod
    def load(cls, engine_dir: str) -> "EngineSettings":
        path = os.path.join(engine_dir, CONFIG_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: run `wenet-triton export` first")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def save(self, engine_dir: str) -> str:
        path = os.path.join(engine_dir, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path
