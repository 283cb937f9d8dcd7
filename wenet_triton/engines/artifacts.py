"""Where exported engines live, and re-exporting only when the checkpoint or settings change."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

from wenet_triton.contract import CONFIG_NAME, EngineSettings
from wenet_triton.engines.export import export_onnx
from wenet_triton.paths import cache_root

log = logging.getLogger(__name__)


def _fingerprint(model_dir: str, beam_size: int, ctc_weight, reverse_weight) -> str:
    h = hashlib.sha1()
    for name in ("train.yaml", "final.pt"):
        p = os.path.join(model_dir, name)
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{name}:{st.st_size if st else -1}:{int(st.st_mtime) if st else -1}".encode())
    h.update(f"{os.path.abspath(model_dir)}|{beam_size}|{ctc_weight}|{reverse_weight}".encode())
    # the code that shapes an export: a change to it must not reuse an old export
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("model/checkpoint.py", "model/conformer.py", "engines/export.py", "contract.py"):
        with open(os.path.join(pkg, name), "rb") as f:
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
    if os.path.exists(os.path.join(engine_dir, CONFIG_NAME)):
        try:
            if EngineSettings.load(engine_dir).fingerprint == fp:
                return engine_dir
        except ValueError:  # an export of another version: export again
            pass
    log.info("exporting %s -> %s (once; later runs reuse it)", model_dir, engine_dir)
    settings = export_onnx(model_dir, engine_dir, beam_size, ctc_weight, reverse_weight)
    settings.fingerprint = fp
    settings.save(engine_dir)
    return engine_dir
