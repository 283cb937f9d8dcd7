"""The public API (wenet_triton.load_model / transcribe) and a plain, non-editable install
that works from any directory with the package data it needs."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT

from wenet_triton.decode.cer import cer, read_text

DEMO = os.path.join(ROOT, "models", "demo_zh_synth")
SAMPLES = os.path.join(ROOT, "wenet_triton", "samples")


def _samples():
    ref = read_text(os.path.join(SAMPLES, "text"))
    return ref, [os.path.join(SAMPLES, f"{u}.wav") for u in sorted(ref)]


def test_load_model_and_transcribe_the_shipped_samples():
    import wenet_triton

    ref, wavs = _samples()
    asr = wenet_triton.load_model(DEMO)
    texts = wenet_triton.transcribe(asr, wavs)
    assert isinstance(texts, list) and len(texts) == len(wavs)
    hyps = dict(zip(sorted(ref), texts))
    # the demo model on its own kind of audio (synthetic espeak-ng speech)
    assert cer((ref[u], hyps[u]) for u in ref)[0] <= 0.15
    assert wenet_triton.transcribe(asr, wavs[0]) == texts[0]


def test_importing_the_contract_loads_no_torch():
    code = ("import sys, wenet_triton.contract, wenet_triton.decode.search, wenet_triton.audio.frontend; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_non_editable_install_works_outside_the_checkout(tmp_path):
    """`pip install .` (a wheel, no source tree): templates, native sources and samples are
    inside the package; build-repo and transcribe run from an unrelated directory."""
    site = tmp_path / "site"
    build_dir = os.path.join(ROOT, "build")  # setuptools builds in the source tree
    had_build = os.path.exists(build_dir)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), ROOT], capture_output=True, text=True, timeout=600)
    if not had_build:
        shutil.rmtree(build_dir, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    pkg = site / "wenet_triton"
    for f in ("serving/templates/serving.yaml", "serving/templates/encoder/1/model.py",
              "csrc/ctc_prefix_beam_search.cpp", "csrc/build.sh", "samples/text"):
        assert (pkg / f).exists(), f
    env = dict(os.environ, PYTHONPATH=str(site), WENET_TRITON_CACHE=str(tmp_path / "cache"))
    env.pop("WENET_TRITON_MODEL", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "wenet_triton.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=900)

    where = subprocess.run([sys.executable, "-c", "import wenet_triton; print(wenet_triton.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    out = cli("transcribe", "--model", DEMO, str(pkg / "samples" / "test_000000.wav"))
    assert out.returncode == 0, out.stderr[-2000:]
    utt, text = out.stdout.strip().split("\t")
    assert utt == "test_000000" and text
    out = cli("build-repo", "--model", DEMO, "--out", str(tmp_path / "repo"))
    assert out.returncode == 0, out.stderr[-2000:]
    for m in ("feature_extractor", "encoder", "decoder", "scoring", "attention_rescoring"):
        assert (tmp_path / "repo" / m / "config.pbtxt").exists()
