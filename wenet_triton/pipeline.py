"""The whole recognizer: waveform -> fbank -> encoder -> CTC prefix beam search ->
attention rescoring -> text. Used offline (`wenet-triton transcribe`), inside the Triton
python models (each stage on its own) and by the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from wenet_triton.audio.frontend import Fbank, check_waveform, pad_feats
from wenet_triton.contract import EngineSettings, FbankConf
from wenet_triton.decode.options import Decoding, load_lm
from wenet_triton.decode.search import (
    ctc_greedy,
    ctc_prefix_beam_search_batch,
    pick_rescored,
    rescoring_inputs,
)
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines.base import Engine


@dataclass
class Result:
    ids: List[int]
    text: str
    score: float
    greedy: List[int] = field(default_factory=list)
    nbest: List = field(default_factory=list)


def search_batch(enc: Dict[str, np.ndarray], beam_size: int, blank: int = 0, lm=None,
                 lm_weight: float = 0.0, length_bonus: float = 0.0):
    """n-best lists for each utterance of an encoder batch output (LM-fused with an lm)."""
    return ctc_prefix_beam_search_batch(enc["beam_log_probs"], enc["beam_log_probs_idx"],
                                        enc["encoder_out_lens"], beam_size, blank, lm, lm_weight,
                                        length_bonus)


def rescore_batch(engine: Engine, enc: Dict[str, np.ndarray], nbest, settings: EngineSettings,
                  lm_rescore_weight: float = 0.0):
    """-> list of (best hyp ids, rescoring score) per utterance."""
    beam = settings.beam_size
    pad, lens, rpad, ctc = rescoring_inputs(nbest, beam, settings.sos, settings.eos)
    best, score = engine.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, lens, rpad, ctc)
    out = []
    for b, hyps in enumerate(nbest):
        i = pick_rescored(hyps, score[b], best[b], lm_rescore_weight)
        ids = list(hyps[i][0]) if i < len(hyps) else []
        out.append((ids, float(score[b, i])))
    return out


class Recognizer:
    def __init__(self, engine: Engine, vocab: Vocab, fbank_conf: Optional[FbankConf] = None,
                 decoding: Optional[Decoding] = None):
        self.engine = engine
        self.settings = engine.settings
        self.vocab = vocab
        self.fbank = Fbank(fbank_conf or self.settings.fbank)
        self.decoding = decoding or Decoding(beam_size=self.settings.beam_size)
        if self.decoding.beam_size != self.settings.beam_size:
            raise ValueError(f"beam size {self.decoding.beam_size} != the export's top-k "
                             f"{self.settings.beam_size} (export again with that beam)")
        self.lm = load_lm(self.decoding.lm, vocab.tokens) if self.decoding.lm else None

    @property
    def min_frames(self) -> int:
        """Fewest fbank frames that give one encoder frame."""
        return self.settings.min_frames

    def recognize_feats(self, feats: Sequence[np.ndarray]) -> List[Result]:
        # audio too short for one encoder frame decodes to nothing
        keep = [i for i, f in enumerate(feats) if f.shape[0] >= self.min_frames]
        out = [Result([], "", 0.0) for _ in feats]
        if keep:
            for i, r in zip(keep, self._recognize_feats([feats[i] for i in keep])):
                out[i] = r
        return out

    def _recognize_feats(self, feats: Sequence[np.ndarray]) -> List[Result]:
        x, lens = pad_feats(feats)
        enc = self.engine.encode(x, lens)
        d = self.decoding
        nbest = search_batch(enc, d.beam_size, self.settings.blank, self.lm, d.lm_weight,
                             d.length_bonus)
        rescored = rescore_batch(self.engine, enc, nbest, self.settings,
                                 d.lm_rescore_weight if self.lm else 0.0)
        results = []
        for b, (ids, score) in enumerate(rescored):
            greedy = ctc_greedy(enc["beam_log_probs_idx"][b], int(enc["encoder_out_lens"][b]))
            results.append(Result(ids, self.vocab.text(ids), score, greedy, nbest[b]))
        return results

    def mode_texts(self, r: Result) -> Dict[str, str]:
        """The text of each decoding mode of one result."""
        return {"attention_rescoring": r.text,
                "ctc_prefix_beam": self.vocab.text(r.nbest[0][0]) if r.nbest else "",
                "ctc_greedy": self.vocab.text(r.greedy)}

    def recognize(self, wavs: Sequence[np.ndarray]) -> List[Result]:
        return self.recognize_feats([self.fbank(check_waveform(w)) for w in wavs])
