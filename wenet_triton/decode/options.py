"""Decoding options: n-best size and the optional n-gram LM, with per-model defaults.

A model dir may carry `decoding.yaml`, the decoding its author recommends, e.g.

    beam_size: 20            # CTC prefix beam / n-best size (the encoder's top-k)
    lm: lm.arpa.gz           # token n-gram LM (ARPA), relative to the model dir
    lm_weight: 0.6           # LM weight in the prefix beam search (shallow fusion)
    lm_rescore_weight: 0.8   # LM weight added to the attention-rescoring score

Flags (`--beam-size`, `--lm`, ...) and serving configs override it; without it the
decoding is WeNet's: beam 10, no LM.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import yaml

from wenet_triton.decode.lm import NgramLM

log = logging.getLogger(__name__)
FILE = "decoding.yaml"


@dataclass
class Decoding:
    beam_size: int = 10
    lm: Optional[str] = None           # ARPA path, or None
    lm_weight: float = 0.5
    lm_rescore_weight: float = 0.5
    length_bonus: float = 0.0

    def as_dict(self) -> Dict:
        return asdict(self)


_TYPES = {"beam_size": int, "lm": str, "lm_weight": float, "lm_rescore_weight": float,
          "length_bonus": float}


def model_defaults(model_dir: Optional[str]) -> Dict:
    """The model dir's decoding.yaml as a dict (lm made absolute), or {}."""
    path = os.path.join(model_dir, FILE) if model_dir else None
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of decoding options")
    unknown = sorted(set(d) - set(_TYPES))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(_TYPES)})")
    out = {}
    for k, v in d.items():
        try:
            out[k] = _TYPES[k](v) if v is not None else None
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {k} must be {_TYPES[k].__name__}, got {v!r}") from None
    if out.get("lm"):
        out["lm"] = os.path.normpath(os.path.join(model_dir, out["lm"]))
    return out


def resolve(model_dir: Optional[str] = None, **given) -> Decoding:
    """Built-in defaults < the model's decoding.yaml < `given` (None: not given).
    lm="none" (or "") turns a model's LM off."""
    d = Decoding().as_dict()
    d.update(model_defaults(model_dir))
    d.update({k: v for k, v in given.items() if v is not None})
    if isinstance(d.get("lm"), str) and d["lm"].lower() in ("", "none"):
        d["lm"] = None
    dec = Decoding(**d)
    if dec.beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {dec.beam_size}")
    if dec.lm and not os.path.exists(dec.lm):
        raise FileNotFoundError(f"LM file not found: {dec.lm}")
    return dec


def from_args(a) -> Decoding:
    """The decoding of a CLI command: its flags over the model's decoding.yaml."""
    return resolve(getattr(a, "model", None), beam_size=getattr(a, "beam_size", None),
                   lm=getattr(a, "lm", None), lm_weight=getattr(a, "lm_weight", None),
                   lm_rescore_weight=getattr(a, "lm_rescore_weight", None))


_LMS: Dict = {}


def load_lm(path: str, units: Sequence[str]):
    """NgramLM from an ARPA file, loaded once per process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size, tuple(units))
    if key not in _LMS:
        t = time.time()
        _LMS[key] = NgramLM.from_arpa(path, units)
        log.info("loaded LM %s (%s) in %.1f s", path, _LMS[key], time.time() - t)
    return _LMS[key]
