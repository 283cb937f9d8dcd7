import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.environ.get("WENET_SHARED", os.path.join(ROOT, "..", "shared")))
MODELS = ("u2pp_conformer", "conformer_2021")


def shared_path(*parts):
    p = os.path.join(SHARED, *parts)
    if not os.path.exists(p):
        if os.environ.get("CI"):
            pytest.fail(f"{p} missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{p} not present")
    return p


def model_dir(name):
    return shared_path("models", name)


def reference(name):
    """decode.json of WeNet's outputs plus a loader for the per-utterance npz files."""
    with open(shared_path("reference", name, "decode.json")) as f:
        dec = json.load(f)
    return dec, (lambda utt: np.load(shared_path("reference", name, f"{utt}.npz")))


def wav_path(utt):
    return shared_path("data", "synth_test", f"{utt}.wav")


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """ONNX exports of both shared models with the rescoring weights WeNet's reference used."""
    from wenet_triton.engines.export import export_onnx

    out = {}
    for name in MODELS:
        dec, _ = reference(name)
        d = str(tmp_path_factory.mktemp(f"export_{name}"))
        export_onnx(model_dir(name), d, beam_size=dec["beam_size"], ctc_weight=dec["ctc_weight"],
                    reverse_weight=dec["reverse_weight"])
        out[name] = d
    return out


@pytest.fixture(scope="session")
def torch_models():
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel

    return {n: ASRModel.from_spec(load_model_dir(model_dir(n))) for n in MODELS}


def pytest_terminal_summary(terminalreporter):
    """Say loudly how many tests were skipped for want of ../shared (or a GPU), and why."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = {}
    for rep in skipped:
        msg = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        key = ("../shared missing" if "not present" in msg and SHARED in msg
               else "no CUDA GPU" if "CUDA" in msg or "GPU" in msg else msg.replace("Skipped: ", ""))
        reasons[key] = reasons.get(key, 0) + 1
    w = terminalreporter
    w.section("skipped tests", sep="=", bold=True, yellow=True)
    for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        w.line(f"{n:4d} skipped: {k}", yellow=True, bold=True)
    if "../shared missing" in reasons:
        w.line(f"SHARED TEST ASSETS NOT FOUND at {SHARED}: {reasons['../shared missing']} tests "
               "(WeNet reference outputs, shared models, synth_test audio) did not run. Put the "
               "shared/ folder beside the checkout or set WENET_SHARED.", red=True, bold=True)
