import numpy as np
import pytest
from conftest import reference, wav_path

from wenet_triton.audio.frontend import AudioError, Fbank, check_waveform, read_audio
from wenet_triton.contract import FbankConf


@pytest.mark.parametrize("impl", Fbank.IMPLS)
def test_fbank_matches_wenet(impl):
    """WeNet's reference feats are stored at fp16 precision (every value is fp16-exact),
    so ours must lie within 1e-3 of the interval that rounds to each stored value."""
    dec, npz = reference("u2pp_conformer")
    fb = Fbank(FbankConf(), impl)
    assert fb.impl == impl
    for utt in sorted(dec["utts"]):
        ref = npz(utt)["feats"]
        assert np.array_equal(ref.astype(np.float16).astype(np.float32), ref)
        ours = fb(read_audio(wav_path(utt)))
        assert ours.shape == ref.shape
        half_ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32) / 2
        excess = np.abs(ours - ref) - half_ulp
        # fp32 FFT rounding shows only in near-silent bins, where log() amplifies it
        over = np.maximum(excess, 0).mean()
        assert excess.max() <= 2e-3 and over <= 1e-5, (utt, excess.max(), over)


def test_resampling_keeps_features_close(tmp_path):
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = read_audio(wav_path("test_000001"))
    p = tmp_path / "x8k.wav"
    sf.write(p, resample_poly(wav, 1, 2), 8000, subtype="FLOAT")
    back = read_audio(str(p), 16000)
    assert abs(len(back) - len(wav)) <= 2
    fb = Fbank(FbankConf())
    a, b = fb(wav), fb(back)
    n = min(len(a), len(b))
    # the 4-8 kHz band is gone; the low mel bins (< 3.5 kHz) must survive
    assert np.median(np.abs(a[:n, :50] - b[:n, :50])) < 0.5


@pytest.mark.parametrize("bad,msg", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.1, np.nan], np.float32), "NaN"),
    (np.array([0.1, np.inf], np.float32), "NaN or inf"),
    (np.zeros((2, 100), np.float32), "1-D"),
    (np.zeros(100, np.int16), "float"),
])
def test_bad_waveforms(bad, msg):
    with pytest.raises(AudioError, match=msg):
        check_waveform(bad)


def test_too_long_and_unreadable(tmp_path):
    with pytest.raises(AudioError, match="longer than"):
        check_waveform(np.zeros(16000 * 3, np.float32), max_seconds=2)
    p = tmp_path / "junk.wav"
    p.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AudioError, match="not a readable audio file"):
        read_audio(str(p))
    for impl in Fbank.IMPLS:
        with pytest.raises(AudioError, match="shorter than one"):
            Fbank(FbankConf(), impl)(np.zeros(399, np.float32))
        assert Fbank(FbankConf(), impl)(np.zeros(400, np.float32)).shape == (1, 80)
    with pytest.raises(ValueError, match="choose from"):
        Fbank(FbankConf(), "sox")


def test_torch_fbank_batch_matches_kaldi_native_fbank():
    """The batched torch fbank (GPU feature extractor) against kaldi-native-fbank and WeNet."""
    from wenet_triton.audio.torch_fbank import TorchFbank

    dec, npz = reference("u2pp_conformer")
    utts = sorted(dec["utts"])
    wavs = [read_audio(wav_path(u)) for u in utts] + [np.zeros(399, np.float32), np.zeros(400, np.float32)]
    ours = TorchFbank(FbankConf()).batch(wavs)
    knf = Fbank(FbankConf(), "knf")
    assert ours[-2].shape == (0, 80) and ours[-1].shape == (1, 80)  # shorter than / one frame
    worst_max = worst_mean = 0.0
    for u, w, f in zip(utts, wavs, ours):
        ref = knf(w)
        assert f.shape == ref.shape
        d = np.abs(f - ref)
        worst_max, worst_mean = max(worst_max, d.max()), max(worst_mean, d.mean())
        wenet = npz(u)["feats"]  # fp16-exact reference, as in test_fbank_matches_wenet
        half_ulp = np.spacing(np.abs(wenet).astype(np.float16)).astype(np.float32) / 2
        assert (np.abs(f - wenet) - half_ulp).max() <= 5e-3
    # fp32 FFTs differ at the 1e-6 level; log() amplifies that only in near-silent bins
    assert worst_mean <= 1e-4 and worst_max <= 5e-3, (worst_mean, worst_max)
