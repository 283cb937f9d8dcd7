"""The interface every engine implements: `encode(feats, lens)` and `rescore(...)`,
numpy in and out, with the export's :class:`EngineSettings` beside it."""
from __future__ import annotations

import numpy as np

from wenet_triton.contract import EngineSettings


class Engine:
    settings: EngineSettings

    def encode(self, feats: np.ndarray, lens: np.ndarray) -> dict:
        """-> the ENCODER_OUTPUTS of the contract, numpy arrays"""
        raise NotImplementedError

    def rescore(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                r_hyps_pad_sos_eos, ctc_score):
        """-> (best_index (B,) int32, score (B, beam) float32)"""
        raise NotImplementedError
