"""Where exported engines live, and re-exporting only when the checkpoint or settings change."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Dict, Optional

from .export import CONFIG_NAME, export_onnx

log = logging.getLogger(__name__)


def cache_root() -> str:
    return os.environ.get("WENET_TRITON_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "wenet_triton"))


def _fingerprint(model_dir: str, beam_size: int, ctc_weight, reverse_weight) -> str:
    h = hashlib.sha1()
    for name in ("train.yaml", "final.pt"):
        p = os.path.join(model_dir, name)
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{name}:{st.st_size if st else -1}:{int(st.st_mtime) if st else -1}".encode())
    h.update(f"{os.path.abspath(model_dir)}|{beam_size}|{ctc_weight}|{reverse_weight}".encode())
    # the code that shapes an export: a change to it must not reuse an old export
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("checkpoint.py", "model.py", "export.py"):
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def ensure_export(model_dir: str, engine_dir: Optional[str] = None, beam_size: int = 10,
                  ctc_weight: Optional[float] = None, reverse_weight: Optional[float] = None
                  ) -> str:
    """Export the model to ONNX unless an up-to-date export is already there; return its dir."""
    fp = _fingerprint(model_dir, beam_size, ctc_weight, reverse_weight)
    if engine_dir is None:
        name = os.path.basename(os.path.abspath(model_dir).rstrip("/"))
        engine_dir = os.path.join(cache_root(), f"{name}-{fp}")
    cfg = os.path.join(engine_dir, CONFIG_NAME)
    if os.path.exists(cfg):
        with open(cfg) as f:
            if json.load(f).get("fingerprint") == fp:
                return engine_dir
    log.info("exporting %s -> %s (once; later runs reuse it)", model_dir, engine_dir)
    settings: Dict = export_onnx(model_dir, engine_dir, beam_size, ctc_weight, reverse_weight)
    settings["fingerprint"] = fp
    with open(cfg, "w") as f:
        json.dump(settings, f, indent=2)
    return engine_dir
