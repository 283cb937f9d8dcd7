"""Streaming front end: waveform pieces -> fbank frames equal to whole-utterance fbank
(kaldi-native-fbank's OnlineFbank keeps the sample remainder) -> the chunk encoder's
frame windows (WeNet's forward_chunk_by_chunk slicing)."""
from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import kaldi_native_fbank as knf
import numpy as np

from wenet_triton.audio.frontend import Fbank
from wenet_triton.contract import FbankConf

log = logging.getLogger(__name__)


class StreamingFbank:
    """Kaldi fbank over waveform pieces (kaldi-native-fbank's OnlineFbank keeps the samples
    of the unfinished frame), so the frames equal `frontend.Fbank` on the whole utterance."""
    def __init__(self, conf: FbankConf = FbankConf()):
        self.conf = conf
        self._opts = Fbank(conf, impl="knf")._opts

        self._f = knf.OnlineFbank(self._opts)
        self._next = 0  # index of the next frame to hand out
        self.finished = False

    def accept(self, wav: np.ndarray) -> np.ndarray:
        """Float samples in [-1, 1) -> the frames they complete, (n, num_mel_bins)."""
        if self.finished:
            raise RuntimeError("accept() after finish()")
        if len(wav):
            self._f.accept_waveform(float(self.conf.sample_rate),
                                    (np.asarray(wav, np.float32) * 32768.0).tolist())
        return self._take()

    def finish(self) -> np.ndarray:
        self.finished = True
        self._f.input_finished()
        return self._take()

    def _take(self) -> np.ndarray:
        ready = self._f.num_frames_ready
        # copy before pop(): get_frame() can return a view of memory that pop() frees
        out = [np.array(self._f.get_frame(i), dtype=np.float32) for i in range(self._next, ready)]
        if ready > self._next:
            self._f.pop(ready - self._next)
        self._next = ready
        if not out:
            return np.zeros((0, self.conf.num_mel_bins), np.float32)
        return np.asarray(out, dtype=np.float32)


def window_bounds(num_frames: int, chunk_size: int, subsampling: int, right_context: int
                  ) -> List[Tuple[int, int]]:
    """(start, end) of each encoder window of an utterance, as WeNet's forward_chunk_by_chunk."""
    context = right_context + 1
    stride = chunk_size * subsampling
    window = (chunk_size - 1) * subsampling + context
    return [(cur, min(cur + window, num_frames))
            for cur in range(0, num_frames - context + 1, stride)]


class FrameWindower:
    """Fbank frames (any number at a time) -> encoder windows: full windows as soon as they are
    complete, the last (shorter, at least `context` frames) one at finish(). Keeps the
    `window - stride` frames the next window shares with this one."""
    def __init__(self, chunk_size: int, subsampling: int, right_context: int, feat_dim: int = 80):
        self.context = right_context + 1
        self.stride = chunk_size * subsampling
        self.window = (chunk_size - 1) * subsampling + self.context
        self._buf = np.zeros((0, feat_dim), np.float32)

    def accept(self, frames: np.ndarray) -> List[np.ndarray]:
        if len(frames):
            self._buf = np.concatenate([self._buf, frames.astype(np.float32, copy=False)])
        out = []
        while len(self._buf) >= self.window:
            out.append(self._buf[:self.window].copy())
            self._buf = self._buf[self.stride:]
        return out

    def finish(self) -> List[np.ndarray]:
        out = [self._buf.copy()] if len(self._buf) >= self.context else []
        self._buf = self._buf[:0]
        return out


class StreamingFeatures:
    """Waveform pieces -> encoder windows (fbank + windowing; CMVN is inside the model)."""
    def __init__(self, settings: Dict, conf: FbankConf = FbankConf()):
        self.fbank = StreamingFbank(conf)
        self.windower = FrameWindower(settings["decoding_chunk_size"], settings["subsampling_rate"],
                                      settings["right_context"], conf.num_mel_bins)

    def accept(self, wav: np.ndarray) -> List[np.ndarray]:
        return self.windower.accept(self.fbank.accept(wav))

    def finish(self) -> List[np.ndarray]:
        return self.windower.accept(self.fbank.finish()) + self.windower.finish()
