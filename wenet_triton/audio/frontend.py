"""Audio reading and Kaldi fbank as WeNet computes it (torchaudio.compliance.kaldi with
dither 0, energy_floor 0, povey window, int16-scale samples), in torch on the CPU (no
torchaudio) or via kaldi-native-fbank."""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import wave
from math import gcd
from typing import List, Sequence, Tuple

import kaldi_native_fbank as knf
import numpy as np

from wenet_triton.contract import FbankConf, min_samples, num_frames

__all__ = ["AudioError", "read_audio", "resample", "check_waveform", "Fbank", "pad_feats",
           "min_samples", "num_frames", "expand_inputs", "utt_id"]

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, too long."""

def _read_wav_stdlib(path: str):
    """PCM wav through the standard library (where soundfile is not installed)."""
    with wave.open(path, "rb") as w:
        width, ch, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    elif width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise ValueError(f"{width * 8}-bit PCM is not supported without soundfile")
    return data.reshape(-1, ch), rate


def read_audio(path: str, target_rate: int = 16000) -> np.ndarray:
    """Read wav/flac/ogg as mono float32 in [-1, 1), resampled to `target_rate`."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    try:
        import soundfile as sf
    except ImportError:  # e.g. a minimal GPU image: PCM wav only
        sf = None
    try:
        if sf is not None:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
        else:
            data, rate = _read_wav_stdlib(path)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError; wave raises Error/EOFError
        raise AudioError(f"{path}: not a readable audio file ({e})") from e
    if data.shape[1] > 1:
        log.warning("%s: %d channels, using the first", path, data.shape[1])
    wav = np.ascontiguousarray(data[:, 0])
    if rate != target_rate:
        log.info("%s: resampling %d Hz -> %d Hz", path, rate, target_rate)
        wav = resample(wav, rate, target_rate)
    return wav


def resample(wav: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase (Kaiser-windowed sinc) resampling; close to, not bit-equal with, sox/torchaudio."""
    from scipy.signal import resample_poly  # slow import, needed only for other sample rates


    g = gcd(src, dst)
    return resample_poly(wav.astype(np.float64), dst // g, src // g).astype(np.float32)


def check_waveform(wav: np.ndarray, name: str = "audio", max_seconds: float | None = None,
                   sample_rate: int = 16000) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D waveform, got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError(f"{name}: empty waveform")
    if not np.issubdtype(wav.dtype, np.floating):
        raise AudioError(f"{name}: expected float samples, got {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name}: waveform contains NaN or inf")
    if max_seconds is not None and wav.size > max_seconds * sample_rate:
        raise AudioError(f"{name}: {wav.size / sample_rate:.1f} s is longer than the "
                         f"configured maximum of {max_seconds:g} s")
    return wav.astype(np.float32, copy=False)


class Fbank:
    """Kaldi fbank for float waveforms in [-1, 1) (scaled to int16 range like WeNet).

    impl "knf" (default): kaldi-native-fbank; "torch": the torch_fbank computation on one
    utterance on the CPU, ~6x less CPU per utterance (2 vs 13 ms per 7 s, one thread) but
    slower end to end in a 2-core Triton run (README); "auto": knf if installed, else torch.
    Both lie within fp16 rounding + 2e-3 of WeNet's reference features (tests/test_frontend.py)."""
    IMPLS = ("torch", "knf")

    def __init__(self, conf: FbankConf = FbankConf(), impl: str = "knf"):
        self.conf = conf
        if impl == "auto":
            impl = "knf" if importlib.util.find_spec("kaldi_native_fbank") else "torch"
        if impl not in self.IMPLS:
            raise ValueError(f"fbank impl {impl!r}: choose from {', '.join(self.IMPLS)}")
        self.impl = impl
        if impl == "torch":
            from wenet_triton.audio.torch_fbank import TorchFbank

            self._torch = TorchFbank(conf, "cpu")
            return

        o = knf.FbankOptions()
        o.frame_opts.samp_freq = float(conf.sample_rate)
        o.frame_opts.frame_length_ms = float(conf.frame_length_ms)
        o.frame_opts.frame_shift_ms = float(conf.frame_shift_ms)
        o.frame_opts.dither = 0.0
        o.frame_opts.window_type = "povey"
        o.frame_opts.snip_edges = True
        o.frame_opts.remove_dc_offset = True
        o.frame_opts.preemph_coeff = 0.97
        o.mel_opts.num_bins = conf.num_mel_bins
        o.energy_floor = 0.0
        o.use_energy = False
        self._opts = o
        self._knf = knf

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        if len(wav) < min_samples(self.conf):
            raise AudioError(f"audio of {len(wav)} samples is shorter than one "
                             f"{self.conf.frame_length_ms:g} ms frame")
        if self.impl == "torch":
            return self._torch.batch([wav])[0]
        f = self._knf.OnlineFbank(self._opts)
        f.accept_waveform(float(self.conf.sample_rate), (wav * 32768.0).tolist())
        f.input_finished()
        return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)]).astype(np.float32)

    def batch(self, wavs: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """-> feats (B, Tmax, D) zero-padded, lengths (B,) int32."""
        feats: List[np.ndarray] = [self(w) for w in wavs]
        return pad_feats(feats)


def pad_feats(feats: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    lens = np.array([f.shape[0] for f in feats], dtype=np.int32)
    out = np.zeros((len(feats), int(lens.max()), feats[0].shape[1]), dtype=np.float32)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lens


def expand_inputs(items: List[str]) -> List[str]:
    """Files, directories (their *.wav/*.flac) and glob patterns -> sorted file list."""
    out: List[str] = []
    for it in items:
        if os.path.isdir(it):
            out += sorted(glob.glob(os.path.join(it, "*.wav")) + glob.glob(os.path.join(it, "*.flac")))
        elif any(c in it for c in "*?["):
            out += sorted(glob.glob(it))
        else:
            out.append(it)
    return out


def utt_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
