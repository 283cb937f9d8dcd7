"""Batched Kaldi fbank in plain torch (GPU-capable): the same computation as
kaldi-native-fbank / torchaudio.compliance.kaldi with WeNet's settings (povey window, DC
removal, pre-emphasis 0.97, power spectrum, mel banks 20 Hz..Nyquist, log, no dither,
energy_floor 0, snip_edges). Used by the Triton feature extractor on GPU hosts; the CPU
path keeps kaldi-native-fbank."""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch

from wenet_triton.contract import FbankConf, num_frames


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
        self._pinned, self._copied = None, None

    def _host_buffer(self, b: int, n: int) -> torch.Tensor:
        """(b, n) staging tensor: pinned and reused on CUDA (after the last copy from it
        finished), so the upload is one asynchronous DMA."""
        if self.device.type != "cuda":
            return torch.empty(b, n, dtype=torch.float32)
        if self._copied is None:
            self._copied = torch.cuda.Event()
        self._copied.synchronize()
        if self._pinned is None or self._pinned.numel() < b * n:
            self._pinned = torch.empty(max(b * n, 1 << 20), dtype=torch.float32, pin_memory=True)
        return self._pinned[: b * n].view(b, n)

    def num_frames(self, n_samples: int) -> int:
        return num_frames(self.conf, n_samples)

    @torch.inference_mode()
    def batch_tensor(self, wavs: Sequence[np.ndarray]):
        """Float waveforms in [-1, 1) -> (feats (B, T, num_mel_bins) float32, lens (B,) int32),
        both on self.device; frames past an utterance's length are zero (like padded batches)."""
        n_frames = [self.num_frames(len(w)) for w in wavs]
        n = max(len(w) for w in wavs)
        host = self._host_buffer(len(wavs), n)
        view = host.numpy()
        for i, w in enumerate(wavs):  # numpy row copies: no torch CPU ops (thread pools)
            view[i, : len(w)] = w
            view[i, len(w):] = 0.0
        x = host.to(self.device, non_blocking=True)
        if self._copied is not None:  # on the stream that copies (self.device's, not the current device's)
            self._copied.record(torch.cuda.current_stream(self.device))
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
        host = self._host_buffer(n, self.win)
        view = host.numpy()
        at = 0
        for f, k in zip(frame_sets, sizes):  # the one copy of the samples into the batch
            if k:
                view[at:at + k] = f
                at += k
        x = host.to(self.device, non_blocking=True)
        if self._copied is not None:
            self._copied.record(torch.cuda.current_stream(self.device))
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
