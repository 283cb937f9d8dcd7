"""The public API: load a WeNet model directory, recognize audio, export, build a Triton
repository. `import wenet_triton` re-exports these names (lazily: importing the package or
its contract loads no torch).

    import wenet_triton
    asr = wenet_triton.load_model("models/demo_zh_synth")       # or your WeNet checkpoint dir
    print(wenet_triton.transcribe(asr, ["a.wav", "b.wav"]))      # -> ["...", "..."]
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from wenet_triton.audio.frontend import read_audio
from wenet_triton.decode.options import Decoding, resolve
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines import open_engine
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.engines.export import export_onnx
from wenet_triton.paths import default_model_dir
from wenet_triton.pipeline import Recognizer
from wenet_triton.serving.repo import build_repo

__all__ = ["load_model", "transcribe", "export_onnx", "build_repo", "Recognizer", "Decoding"]

Audio = Union[str, np.ndarray]


def load_model(model_dir: Optional[str] = None, engine: str = "onnxruntime", device: str = "cpu",
               dtype: Optional[str] = None, decoding: Optional[Decoding] = None,
               engine_dir: Optional[str] = None) -> Recognizer:
    """A recognizer for a WeNet model dir (train.yaml, final.pt, units.txt|words.txt,
    global_cmvn). The ONNX export is made once and cached; `decoding` defaults to the model's
    decoding.yaml (beam, LM). engine: onnxruntime (CPU), torch, torch_cuda (GPU)."""
    model_dir = model_dir or default_model_dir()
    if model_dir is None:
        raise FileNotFoundError("no model dir given and no default model found "
                                "(pass model_dir or set WENET_TRITON_MODEL)")
    dec = decoding or resolve(model_dir)
    engine_dir = engine_dir or ensure_export(model_dir, None, dec.beam_size)
    eng = open_engine(engine_dir, engine, device, dtype, model_dir)
    return Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=dec)


def transcribe(recognizer: Recognizer, audio: Union[Audio, Sequence[Audio]]) -> Union[str, List[str]]:
    """Text of one input or of each of several. An input is a file path (any rate: resampled)
    or a float32 waveform in [-1, 1] at the model's sample rate."""
    single = isinstance(audio, (str, np.ndarray))
    items = [audio] if single else list(audio)
    rate = recognizer.fbank.conf.sample_rate
    wavs = [read_audio(a, rate) if isinstance(a, str) else np.asarray(a, np.float32) for a in items]
    texts = [r.text for r in recognizer.recognize(wavs)]
    return texts[0] if single else texts
