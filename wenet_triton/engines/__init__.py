"""Engines behind one interface (:class:`Engine`): `encode(feats, lens)` and `rescore(...)`,
numpy in and out.

- ``onnxruntime``: the exported encoder.onnx / decoder.onnx (CPU default).
- ``torch``: the PyTorch model itself (CPU or CUDA, fp32 or fp16/bf16 autocast).
- ``torch_cuda``: the fused CUDA engine (fp16, CUDA graphs, kernels from csrc/).
TensorRT plans (wenet_triton.trt) are served by Triton's own TensorRT backend.
"""
from __future__ import annotations

from typing import Optional

from wenet_triton.contract import ENGINES, EngineSettings
from wenet_triton.engines.base import Engine
from wenet_triton.engines.cuda import CudaEngine
from wenet_triton.engines.onnx import OnnxEngine
from wenet_triton.engines.torch_engine import TorchEngine
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel

__all__ = ["Engine", "OnnxEngine", "TorchEngine", "CudaEngine", "open_engine", "ENGINES"]


def open_engine(engine_dir: str, engine: str = "onnxruntime", device: str = "cpu",
                dtype: Optional[str] = None, model_dir: Optional[str] = None, threads: int = 0,
                parts=("encoder", "decoder")) -> Engine:
    """The engine named `engine` over an export directory (torch engines rebuild the model
    from its checkpoint: `model_dir`, else the one the export came from)."""
    if engine == "onnxruntime":
        return OnnxEngine(engine_dir, threads=threads, parts=parts)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    settings = EngineSettings.load(engine_dir)
    model = ASRModel.from_spec(load_model_dir(model_dir or settings.source_model_dir))
    if engine == "torch":
        return TorchEngine(model, settings, device, dtype)
    dev = device if device.startswith("cuda") else "cuda"
    return CudaEngine(model, settings, dev, dtype or "float16")
