"""Batched Kaldi fbank in plain torch (GPU-capable): the same computation as
kaldi-native-fbank / torchaudio.compliance.kaldi with WeNet's settings (povey window, DC
removal, pre-emphasis 0.97, power spectrum, mel banks 20 Hz..Nyquist, log, no dither,
energy_floor 0, snip_edges). Used by the Triton feature extractor on GPU hosts; the CPU
path keeps kaldi-native-fbank."""
from __future__ import annotations

import collections
import math
import threading
from typing import List, Sequence, Union

import numpy as np
import torch

from wenet_triton.contract import FbankConf, in_unit_range, num_frames


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: int, low: float = 20.0,
                    high: float = 0.0) -> np.ndarray:
    """(num_bins, n_fft // 2 + 1) triangular filters in Kaldi's mel scale (no VTLN)."""
    nyquist = 0.5 * sample_rate
    high = nyquist + high if high <= 0 else high
    fft_freqs = np.arange(n_fft // 2) * sample_rate / n_fft  # Kaldi leaves out the Nyquist bin
    mel_low, mel_high = _mel(low), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    mel = _mel(fft_freqs)
    banks = np.zeros((num_bins, n_fft // 2 + 1), np.float64)
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (mel - left) / (center - left)
        down = (right - mel) / (right - center)
        w = np.maximum(0.0, np.minimum(up, down))
        banks[b, : n_fft // 2] = np.where((mel > left) & (mel < right), w, 0.0)
    return banks.astype(np.float32)


class TorchFbank:
    def __init__(self, conf: FbankConf = FbankConf(), device: str = "cpu"):
        self.conf = conf
        self.device = torch.device(device)
        sr = conf.sample_rate
        self.win = int(sr * conf.frame_length_ms / 1000)
        self.shift = int(sr * conf.frame_shift_ms / 1000)
        self.n_fft = 1 << (self.win - 1).bit_length()
        n = torch.arange(self.win, dtype=torch.float64)
        window = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (self.win - 1))) ** 0.85  # povey
        self.window = window.float().to(self.device)
        self.banks = torch.from_numpy(kaldi_mel_banks(conf.num_mel_bins, self.n_fft, sr)).to(self.device)
        self.eps = torch.finfo(torch.float32).eps
        # pinned staging buffers (CUDA), each with the event of the last upload from it; a
        # thread takes a free one, fills it and gives it back once its upload is queued
        self._free: collections.deque = collections.deque()
        self._free_lock = threading.Lock()

    def _take(self, b: int, n: int) -> "_Slot":
        """A (b, n) float32 staging buffer: pinned on CUDA (the upload is one asynchronous
        DMA) and not being filled or uploaded from by anyone else."""
        if self.device.type != "cuda":
            return _Slot(torch.empty(b, n, dtype=torch.float32), None, b * n)
        with self._free_lock:
            slot = self._free.popleft() if self._free else None
        if slot is None:
            slot = _Slot(None, torch.cuda.Event(), 0)
        slot.event.synchronize()  # its previous upload is done
        if slot.buf is None or slot.buf.numel() < b * n:
            slot.buf = torch.empty(max(b * n, 1 << 20), dtype=torch.float32, pin_memory=True)
        slot.used = b * n
        return slot

    def _upload(self, slot: "_Slot", shape) -> torch.Tensor:
        """Queue the staging buffer's copy to self.device and give the buffer back."""
        host = slot.buf[: slot.used].view(*shape)
        if slot.event is None:
            return host.to(self.device)
        x = host.to(self.device, non_blocking=True)
        slot.event.record(torch.cuda.current_stream(self.device))
        with self._free_lock:
            self._free.append(slot)
        return x

    def stage(self, wavs: Sequence[np.ndarray], check_range: bool = False, pool=None) -> "Staged":
        """The host half of batch_tensor: the waveforms copied into a (pinned) buffer. Needs
        no GPU lock; batch_tensor(staged) then only queues GPU work. check_range: each row is
        also checked to lie in [-1, 1] (NaN fails) right after its copy, while it is still in
        the cache (one pass over memory instead of two); `Staged.bad` lists the rows that do
        not. pool: an executor the rows are split over (numpy copies and reductions release
        the GIL)."""
        n = max(len(w) for w in wavs)
        slot = self._take(len(wavs), n)
        view = slot.buf[: slot.used].view(len(wavs), n).numpy()

        def fill(i: int) -> bool:  # numpy row copies: no torch CPU ops (thread pools)
            w = wavs[i]
            row = view[i, : len(w)]
            row[...] = w
            view[i, len(w):] = 0.0
            return not check_range or in_unit_range(row)

        rows = range(len(wavs))
        ok = list(pool.map(fill, rows)) if pool is not None and len(wavs) > 1 else [fill(i) for i in rows]
        return Staged(slot, (len(wavs), n), [self.num_frames(len(w)) for w in wavs],
                      [i for i, good in enumerate(ok) if not good])

    def unstage(self, staged: "Staged"):
        """Give back the buffer of a staged batch that will not be uploaded."""
        if staged.slot.event is not None:
            with self._free_lock:
                self._free.append(staged.slot)
        staged.slot = None

    def num_frames(self, n_samples: int) -> int:
        return num_frames(self.conf, n_samples)

    @torch.inference_mode()
    def batch_tensor(self, wavs: Union[Sequence[np.ndarray], "Staged"]):
        """Float waveforms in [-1, 1) (or stage() of them) -> (feats (B, T, num_mel_bins)
        float32, lens (B,) int32), both on self.device; frames past an utterance's length
        are zero (like padded batches)."""
        staged = wavs if isinstance(wavs, Staged) else self.stage(wavs)
        n_frames = staged.frames
        x = self._upload(staged.slot, staged.shape)
        x = x * 32768.0
        feats = self._fbank(x.unfold(1, self.win, self.shift))  # frames (B, F, win)
        lens = torch.tensor(n_frames, dtype=torch.int32).to(self.device, non_blocking=True)
        valid = torch.arange(feats.shape[1], device=self.device)[None, :] < lens[:, None]
        return feats * valid[:, :, None], lens

    def _fbank(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., win) frames of int16-scale samples -> (..., num_mel_bins) log mel energies."""
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset (a new tensor:
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[-1] := x[0]  in place from here)
        frames.sub_(prev.mul_(0.97)).mul_(self.window)  # pre-emphasis, window
        spec = torch.fft.rfft(frames, n=self.n_fft, dim=-1)
        power = spec.real ** 2 + spec.imag ** 2
        return (power @ self.banks.t()).clamp_(min=self.eps).log_()

    @torch.inference_mode()
    def frames(self, frame_sets: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Frames cut elsewhere (each set (n_i, frame_len) float samples in [-1, 1), e.g. a
        streaming front end's, any n_i >= 0) -> their fbank, (n_i, num_mel_bins) float32 each,
        computed in one batch on self.device. A Kaldi frame's fbank depends only on its own
        samples, so this equals the frames' rows of `batch` on the whole utterance."""
        sizes = [len(f) for f in frame_sets]
        n = sum(sizes)
        if n == 0:
            return [np.zeros((0, self.conf.num_mel_bins), np.float32) for _ in frame_sets]
        slot = self._take(n, self.win)
        view = slot.buf[: slot.used].view(n, self.win).numpy()
        at = 0
        for f, k in zip(frame_sets, sizes):  # the one copy of the samples into the batch
            if k:
                view[at:at + k] = f
                at += k
        x = self._upload(slot, (n, self.win))
        feats = self._fbank(x * 32768.0).cpu().numpy()
        out, at = [], 0
        for k in sizes:
            out.append(feats[at:at + k])
            at += k
        return out

    def batch(self, wavs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Float waveforms in [-1, 1) -> per-utterance (T_i, num_mel_bins) float32 arrays."""
        feats, lens = self.batch_tensor(wavs)
        feats = feats.cpu().numpy()
        return [feats[i, :n] for i, n in enumerate(lens.cpu().tolist())]


class _Slot:
    """A staging buffer, the event of its last upload (None off CUDA) and the part in use."""
    def __init__(self, buf, event, used: int):
        self.buf, self.event, self.used = buf, event, used


class Staged:
    """Waveforms in a staging buffer (TorchFbank.stage), waiting for batch_tensor; `bad`: the
    rows outside [-1, 1] when stage() checked them."""
    def __init__(self, slot: _Slot, shape, frames: List[int], bad: Sequence[int] = ()):
        self.slot, self.shape, self.frames, self.bad = slot, shape, frames, list(bad)
