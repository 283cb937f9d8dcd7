"""Engines behind one interface: `encode(feats, lens)` and `rescore(...)`, numpy in and out.

- ``onnxruntime``: the exported encoder.onnx / decoder.onnx (CPU default).
- ``torch``: the PyTorch model itself (CPU or CUDA, fp32 or fp16/bf16 autocast).
The GPU engine with fused kernels and TensorRT plug into the same interface.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from .export import CONFIG_NAME, ENCODER_OUTPUTS, decoder_io

ENGINES = ("onnxruntime", "torch", "torch_cuda")


def load_settings(engine_dir: str) -> Dict:
    path = os.path.join(engine_dir, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run `wenet-triton export` first")
    with open(path) as f:
        return json.load(f)


class Engine:
    settings: Dict

    def encode(self, feats: np.ndarray, lens: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def rescore(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos, ctc_score):
        """-> (best_index (B,) int32, score (B, beam) float32)"""
        raise NotImplementedError


class OnnxEngine(Engine):
    """encoder.onnx and/or decoder.onnx (`parts`) from one directory."""

    def __init__(self, engine_dir: str, providers=None, threads: int = 0,
                 parts=("encoder", "decoder")):
        import onnxruntime as ort

        self.settings = load_settings(engine_dir)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]

        def session(name):
            path = os.path.join(engine_dir, f"{name}.onnx")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found")
            return ort.InferenceSession(path, so, providers=providers)

        self.enc = session("encoder") if "encoder" in parts else None
        self.dec = session("decoder") if "decoder" in parts else None
        self.dec_inputs, _ = decoder_io(self.settings)

    def encode(self, feats, lens):
        outs = self.enc.run(ENCODER_OUTPUTS, {"speech": np.ascontiguousarray(feats, np.float32),
                                              "speech_lengths": lens.astype(np.int32)})
        return dict(zip(ENCODER_OUTPUTS, outs))

    def rescore(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos, ctc_score):
        feed = {"encoder_out": encoder_out.astype(np.float32),
                "encoder_out_lens": encoder_out_lens.astype(np.int32),
                "hyps_pad_sos_eos": hyps_pad_sos_eos.astype(np.int64),
                "hyps_lens_sos": hyps_lens_sos.astype(np.int32),
                "r_hyps_pad_sos_eos": r_hyps_pad_sos_eos.astype(np.int64),
                "ctc_score": ctc_score.astype(np.float32)}
        best, score = self.dec.run(["best_index", "score"],
                                   {k: feed[k] for k in self.dec_inputs})
        return best, score


class TorchEngine(Engine):
    """The PyTorch model; `dtype` float16/bfloat16 runs under autocast."""

    def __init__(self, model, settings: Dict, device: str = "cpu", dtype: Optional[str] = None):
        import torch

        from .model import ExportDecoder, ExportEncoder

        self.torch = torch
        self.settings = settings
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.enc = ExportEncoder(self.model, settings["beam_size"])
        self.dec = ExportDecoder(self.model, settings["ctc_weight"], settings["reverse_weight"])
        self.autocast = getattr(torch, dtype) if dtype not in (None, "float32") else None

    def _ctx(self):
        t = self.torch
        if self.autocast is None:
            return t.inference_mode()
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(t.inference_mode())
        stack.enter_context(t.autocast(self.device.type, dtype=self.autocast))
        return stack

    def _t(self, a, dtype=None):
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.to(self.device, dtype) if dtype is not None else t.to(self.device)

    def encode(self, feats, lens):
        t = self.torch
        with self._ctx():
            outs = self.enc(self._t(feats, t.float32), self._t(lens, t.int32))
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                for k, v in zip(ENCODER_OUTPUTS, outs)}

    def rescore(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos, ctc_score):
        t = self.torch
        with self._ctx():
            best, score = self.dec(self._t(encoder_out, t.float32), self._t(encoder_out_lens),
                                   self._t(hyps_pad_sos_eos, t.int64), self._t(hyps_lens_sos),
                                   self._t(r_hyps_pad_sos_eos, t.int64),
                                   self._t(ctc_score, t.float32))
        return best.cpu().numpy(), score.float().cpu().numpy()


def open_engine(engine_dir: str, engine: str = "onnxruntime", device: str = "cpu",
                dtype: Optional[str] = None, model_dir: Optional[str] = None, threads: int = 0,
                parts=("encoder", "decoder")) -> Engine:
    if engine == "onnxruntime":
        return OnnxEngine(engine_dir, threads=threads, parts=parts)
    if engine in ("torch", "torch_cuda"):
        from .checkpoint import load_model_dir
        from .model import ASRModel

        settings = load_settings(engine_dir)
        model = ASRModel.from_spec(load_model_dir(model_dir or settings["source_model_dir"]))
        if engine == "torch":
            return TorchEngine(model, settings, device, dtype)
        from .gpu_engine import CudaEngine

        dev = device if device.startswith("cuda") else "cuda"
        return CudaEngine(model, settings, dev, dtype or "float16")
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
