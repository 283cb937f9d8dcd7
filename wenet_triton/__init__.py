"""Serve WeNet U2 / U2++ conformer checkpoints with Triton Inference Server.

Public API (see wenet_triton.api): ``load_model``, ``transcribe``, ``export_onnx``,
``build_repo``. The names load on first use, so ``import wenet_triton.contract`` and the
serving stubs stay light (no torch).
"""
import importlib

__version__ = "0.2.0"
__all__ = ["load_model", "transcribe", "export_onnx", "build_repo", "Recognizer", "Decoding"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("wenet_triton.api"), name)
    raise AttributeError(f"module 'wenet_triton' has no attribute {name!r}")
