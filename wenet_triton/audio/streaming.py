"""Streaming front end: waveform pieces -> fbank frames equal to whole-utterance fbank
-> the chunk encoder's frame windows (WeNet's forward_chunk_by_chunk slicing).

Two fbank paths: per stream, kaldi-native-fbank's OnlineFbank (keeps the sample remainder;
bit-equal to `Fbank` on the whole utterance), or batched: each stream only cuts its samples
into Kaldi frames (`SampleFramer`, keeping the samples from the start of its next frame) and
one `FrameFbank` call computes the fbank of the new frames of many streams at once (torch, on
the CPU or a GPU; within the torch-vs-knf tolerance of tests/test_frontend.py), then each
stream windows its own frames (`accept_many`)."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import kaldi_native_fbank as knf
import numpy as np

from wenet_triton.audio.frontend import Fbank
from wenet_triton.contract import FbankConf, min_samples, num_frames

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


class SampleFramer:
    """Waveform pieces -> the Kaldi frames (snip_edges) they complete, as rows of samples
    (n, frame_len); keeps the samples from the start of the next frame (at most one frame's
    worth plus a shift). At finish() a trailing partial frame is dropped, as
    kaldi-native-fbank's OnlineFbank does with snip_edges."""
    def __init__(self, conf: FbankConf = FbankConf()):
        self.conf = conf
        self.win = min_samples(conf)
        self.shift = int(conf.sample_rate * conf.frame_shift_ms / 1000)
        self._rest = np.zeros(0, np.float32)
        self.finished = False

    def accept(self, wav: np.ndarray) -> np.ndarray:
        """-> (n, frame_len) float32: the new frames, a read-only view (no copy) of `wav` or
        of this stream's own buffer: use it before changing `wav`'s samples."""
        if self.finished:
            raise RuntimeError("accept() after finish()")
        wav = np.asarray(wav, np.float32)
        buf = np.concatenate([self._rest, wav]) if len(self._rest) else wav
        n = num_frames(self.conf, len(buf))
        if n == 0:
            self._rest = buf.copy() if buf is wav else buf
            return np.zeros((0, self.win), np.float32)
        self._rest = buf[n * self.shift:].copy()
        return np.lib.stride_tricks.sliding_window_view(buf, self.win)[::self.shift][:n]

    def finish(self) -> np.ndarray:
        self.finished = True
        self._rest = self._rest[:0]
        return np.zeros((0, self.win), np.float32)


class FrameFbank:
    """The fbank of frames cut by many streams' `SampleFramer`s, in one batch (torch fbank on
    `device`: "cpu" or a CUDA device). Shared by the streams of a `StreamDecoder`."""
    def __init__(self, conf: FbankConf = FbankConf(), device: str = "cpu"):
        from wenet_triton.audio.torch_fbank import TorchFbank

        self.conf = conf
        self.torch = TorchFbank(conf, device)

    def __call__(self, frame_sets: Sequence[np.ndarray]) -> List[np.ndarray]:
        return self.torch.frames(frame_sets)


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
    """Waveform pieces -> encoder windows (fbank + windowing; CMVN is inside the model).

    frame_fbank None: kaldi-native-fbank per stream (`StreamingFbank`). A `FrameFbank`: this
    stream cuts frames (`SampleFramer`) and that computes their fbank, batched over the
    streams of one `accept_many` call."""
    def __init__(self, settings: Dict, conf: FbankConf = FbankConf(),
                 frame_fbank: Optional[FrameFbank] = None):
        self.frame_fbank = frame_fbank
        if frame_fbank is None:
            self.fbank = StreamingFbank(conf)
        else:
            self.framer = SampleFramer(conf)
        self.windower = FrameWindower(settings["decoding_chunk_size"], settings["subsampling_rate"],
                                      settings["right_context"], conf.num_mel_bins)

    @property
    def finished(self) -> bool:
        return (self.fbank if self.frame_fbank is None else self.framer).finished

    def accept(self, wav: np.ndarray) -> List[np.ndarray]:
        return accept_many([(self, wav, False)])[0]

    def finish(self) -> List[np.ndarray]:
        return accept_many([(self, np.zeros(0, np.float32), True)])[0]


def accept_many(items: Sequence[Tuple[StreamingFeatures, np.ndarray, bool]]) -> List[List[np.ndarray]]:
    """(features, samples, last) items, in order (a stream may appear more than once; `last`
    finishes it) -> each item's encoder windows. Streams with a `FrameFbank` cut their frames
    first, then one call per FrameFbank computes the fbank of all of them."""
    feats: List[Optional[np.ndarray]] = [None] * len(items)
    batches: Dict[int, Tuple[FrameFbank, List[int], List[np.ndarray]]] = {}
    for k, (f, wav, last) in enumerate(items):
        if f.frame_fbank is None:
            got = [f.fbank.accept(wav)] if len(wav) else []
            if last:
                got.append(f.fbank.finish())
            feats[k] = np.concatenate(got) if len(got) > 1 else (got[0] if got else None)
            continue
        frames = f.framer.accept(wav) if len(wav) else None
        if frames is not None and len(frames):
            b = batches.setdefault(id(f.frame_fbank), (f.frame_fbank, [], []))
            b[1].append(k)
            b[2].append(frames)
        if last:
            f.framer.finish()
    for fb, ks, frames in batches.values():
        for k, x in zip(ks, fb(frames)):
            feats[k] = x
    out = []
    for (f, _, last), x in zip(items, feats):
        w = f.windower.accept(x) if x is not None else []
        out.append(w + f.windower.finish() if last else w)
    return out
