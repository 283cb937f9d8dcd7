"""The ONNX export run by onnxruntime (the CPU default)."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from wenet_triton.contract import ENCODER_OUTPUTS, EngineSettings
from wenet_triton.engines.base import Engine


class OnnxEngine(Engine):
    """encoder.onnx and/or decoder.onnx (`parts`) from one directory."""

    def __init__(self, engine_dir: str, providers=None, threads: int = 0,
                 parts=("encoder", "decoder")):
        self.settings = EngineSettings.load(engine_dir)
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
        self.dec_inputs, _ = self.settings.decoder_io()

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
