"""The PyTorch model itself as an engine (CPU or CUDA, fp32 or fp16/bf16 autocast)."""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from wenet_triton.contract import ENCODER_OUTPUTS, EngineSettings
from wenet_triton.engines.base import Engine
from wenet_triton.model.conformer import ExportDecoder, ExportEncoder


class TorchEngine(Engine):
    """The PyTorch model; `dtype` float16/bfloat16 runs under autocast."""

    def __init__(self, model, settings: EngineSettings, device: str = "cpu", dtype: Optional[str] = None):
        self.torch = torch
        self.settings = settings
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.enc = ExportEncoder(self.model, settings.beam_size)
        self.dec = ExportDecoder(self.model, settings.ctc_weight, settings.reverse_weight)
        self.autocast = getattr(torch, dtype) if dtype not in (None, "float32") else None

    def _ctx(self):
        t = self.torch
        if self.autocast is None:
            return t.inference_mode()
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
