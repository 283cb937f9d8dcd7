"""The opt-in FP8 encoder FFNs (wenet_triton/engines/fp8.py) on the CPU: the engine's
arithmetic (torch._scaled_mm over e4m3 operands) equals the reference simulation, calibration
files round-trip and wrong ones are refused by name, and the accuracy bar of issue #17: on the
demo model over synth_test the FP8 FFNs lose at most 0.1 CER points. tests/test_gpu.py runs
the Triton kernel and the GPU engine against the same simulation."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED

from wenet_triton.engines import fp8
from wenet_triton.model import synthetic
from wenet_triton.model.conformer import ASRModel, PositionwiseFeedForward

DEMO = os.path.join(ROOT, "models", "demo_zh_synth")
SYNTH = os.path.join(SHARED, "data", "synth_test")


def test_quantize_rounds_to_e4m3_and_clamps():
    x = torch.tensor([0.0, 1.0, 1.06, 1.07, -3.3, 1000.0, -1e9])
    q = fp8.quantize(x, 1.0).float()
    # e4m3 around 1: steps of 1/8; 1.06 rounds down, 1.07 up; beyond 448 clamps (no NaN)
    assert q.tolist() == [0.0, 1.0, 1.0, 1.125, -3.25, 448.0, -448.0]
    assert fp8.fake_quant(torch.tensor([2.12]), 2.0).item() == pytest.approx(2.0)  # 1.06 * 2


def test_fp8_ffn_equals_its_simulation():
    """The engine's FP8 FFN without Triton (two torch._scaled_mm, SiLU and quantization
    between them) against the simulation the CER measurement uses: the same operands, the
    same roundings, fp32 sums in another order; and clearly not the 32-bit FFN."""
    torch.manual_seed(0)
    m = PositionwiseFeedForward(64, 256, torch.nn.SiLU()).eval()
    x = torch.randn(4, 300, 64)
    with torch.no_grad():
        amax = (x.abs().max().item(), m.activation(m.w_1(x)).abs().max().item())
        q = fp8.pack(m, amax, "cpu")
        assert q.w1.dtype == torch.float8_e4m3fn and q.w1.shape == (256, 64) and q.w2.shape == (64, 256)
        y = fp8.ffn(x, q, m.w_1.bias, m.w_2.bias, "silu")
        sim = fp8._simulated_forward(m, fp8.act_scale(amax[0]), fp8.act_scale(amax[1]))(x)
        ref = m(x)
    assert y.shape == x.shape
    scale = ref.abs().max().item()
    assert (y - sim).abs().max().item() <= 1e-5 * scale
    assert 1e-3 * scale < (y - ref).abs().max().item() < 0.1 * scale


def test_calibrate_save_load_and_refusals(tmp_path):
    spec = synthetic.random_spec(synthetic.U2PP)
    model = ASRModel.from_spec(spec)
    g = np.random.default_rng(0)
    feats = [(g.standard_normal((n, 80)) * 2 + 12).astype(np.float32) for n in (120, 77)]
    scales = fp8.calibrate(model, fp8.feats_batches(feats))
    names = [n for n, _ in fp8.ffn_modules(model)]
    assert list(scales["ffn"]) == names and len(names) == 2 * len(model.encoder.encoders)
    assert scales["utterances"] == 2 and scales["frames"] == 197
    assert all(a > 0 and h > 0 for a, h in scales["ffn"].values())
    # the hooks are gone: a second run records the same ranges
    assert fp8.calibrate(model, fp8.feats_batches(feats))["ffn"] == scales["ffn"]
    path = str(tmp_path / "s.json")
    fp8.save(scales, path)
    assert fp8.load(path) == json.loads(json.dumps(scales))
    (tmp_path / "bad.json").write_text('{"ffn": {}}')
    with pytest.raises(ValueError, match="not a 'wenet-triton fp8 scales v1' file"):
        fp8.load(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="cannot read it"):
        fp8.load(str(tmp_path / "missing.json"))
    other = ASRModel.from_spec(synthetic.random_spec(synthetic.AISHELL))
    with pytest.raises(ValueError, match="do not fit this model"):
        fp8.check_model(scales, other)
    # the simulation swaps the FFNs' forward and puts it back
    x = torch.from_numpy(feats[0][None])
    lens = torch.tensor([120], dtype=torch.int32)
    with torch.no_grad():
        before = model.encode(x, lens)[0]
        with fp8.simulate(model, scales):
            during = model.encode(x, lens)[0]
        after = model.encode(x, lens)[0]
    assert torch.equal(before, after) and not torch.equal(before, during)


@pytest.mark.skipif(not os.path.isdir(SYNTH), reason="needs ../shared/data/synth_test")
def test_fp8_ffns_lose_at_most_a_tenth_of_a_cer_point_on_synth_test():
    """Issue #17's bar for FP8 (<= 0.1 absolute CER on synth_test, the published INT8 attempt
    lost 1.4): the demo model with its default decoding (LM, beam), scales calibrated on the
    first 20 utterances, CER over the other 80, fp32 vs the FP8 simulation. Measured
    2026-12-03: 9.899 % vs 9.732 % (76/80 transcripts unchanged)."""
    from benchmarks.fp8_cer import measure

    plain, q8 = measure(DEMO, SYNTH, os.path.join(SYNTH, "text"), 20, "torch", 8)
    assert plain["utts"] == q8["utts"] == 80
    assert q8["cer_pct"] - plain["cer_pct"] <= 0.1, (plain, q8)
    assert q8["same_as_first"] >= 70  # FP8 moves a few transcripts, not most


@pytest.mark.skipif(not os.path.isdir(SYNTH), reason="needs ../shared/data/synth_test")
def test_calibrate_fp8_command(tmp_path):
    """`wenet-triton calibrate-fp8` writes scales that load and fit the model; a missing file
    is named and no audio is a clear error."""
    import subprocess
    import sys

    from wenet_triton.model.checkpoint import load_model_dir

    cli = os.path.join(os.path.dirname(sys.executable), "wenet-triton")
    out = str(tmp_path / "s.json")
    res = subprocess.run([cli, "calibrate-fp8", "--model", DEMO, "--max-wavs", "3", "--out", out, SYNTH],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "from 3 utterances" in res.stdout
    scales = fp8.load(out)
    fp8.check_model(scales, ASRModel.from_spec(load_model_dir(DEMO)))
    res = subprocess.run([cli, "calibrate-fp8", "--model", DEMO, "--out", out, str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "none: no such file" in res.stderr and "no audio given" in res.stderr
