"""ONNX exports (onnxruntime) against WeNet's outputs, at several batch sizes and lengths."""
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import MODELS, reference

from wenet_triton.audio.frontend import pad_feats
from wenet_triton.engines import OnnxEngine, TorchEngine


@pytest.mark.parametrize("name", MODELS)
def test_onnx_encoder_matches_wenet(name, exports):
    eng = OnnxEngine(exports[name])
    dec, npz = reference(name)
    utts = sorted(dec["utts"])
    for i in range(0, len(utts), 7):  # batches of mixed lengths: 7, 7, 6
        group = utts[i:i + 7]
        refs = [npz(u) for u in group]
        x, lens = pad_feats([r["feats"] for r in refs])
        out = eng.encode(x, lens)
        for b, r in enumerate(refs):
            n = r["encoder_out"].shape[0]
            assert out["encoder_out_lens"][b] == n
            assert np.abs(out["encoder_out"][b, :n] - r["encoder_out"]).max() <= 1e-4
            assert np.abs(out["beam_log_probs"][b, :n] - r["ctc_topk_values"]).max() <= 1e-4
            np.testing.assert_array_equal(out["beam_log_probs_idx"][b, :n, 0], r["ctc_topk_idx"][:, 0])
            at_ref = np.take_along_axis(out["ctc_log_probs"][b, :n], r["ctc_topk_idx"], 1)
            assert np.abs(at_ref - r["ctc_topk_values"]).max() <= 1e-4
            if "ctc_log_probs" in r.files:
                assert np.abs(out["ctc_log_probs"][b, :n] - r["ctc_log_probs"]).max() <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_onnx_io_contract_and_symbolic_shapes(name, exports, torch_models):
    enc = onnx.load(f"{exports[name]}/encoder.onnx", load_external_data=False)
    assert [i.name for i in enc.graph.input] == ["speech", "speech_lengths"]
    assert [o.name for o in enc.graph.output] == [
        "encoder_out", "encoder_out_lens", "ctc_log_probs", "beam_log_probs", "beam_log_probs_idx"]
    dims = enc.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # B and T symbolic
    dec = onnx.load(f"{exports[name]}/decoder.onnx", load_external_data=False)
    names = [i.name for i in dec.graph.input]
    expect = ["encoder_out", "encoder_out_lens", "hyps_pad_sos_eos", "hyps_lens_sos"]
    if name == "u2pp_conformer":
        expect.append("r_hyps_pad_sos_eos")
    assert names == expect + ["ctc_score"]
    assert [o.name for o in dec.graph.output] == ["best_index", "score"]
    # lengths never seen at export time, vs PyTorch
    ort_eng = OnnxEngine(exports[name])
    pt = TorchEngine(torch_models[name], ort_eng.settings)
    g = torch.Generator().manual_seed(1)
    for batch, frames in [(1, 7), (2, 555), (5, 1999)]:
        x = (torch.randn(batch, frames, 80, generator=g) * 3 + 10).numpy()
        lens = np.linspace(frames, max(7, frames // 3), batch).astype(np.int32)
        a, b = pt.encode(x, lens), ort_eng.encode(x, lens)
        for b_ in range(batch):
            n = a["encoder_out_lens"][b_]
            assert np.abs(a["encoder_out"][b_, :n] - b["encoder_out"][b_, :n]).max() <= 1e-4


def test_export_cache_reused_and_keyed_by_settings(tmp_path, monkeypatch):
    from conftest import model_dir

    from wenet_triton.engines.artifacts import ensure_export

    monkeypatch.setenv("WENET_TRITON_CACHE", str(tmp_path))
    d1 = ensure_export(model_dir("conformer_2021"), beam_size=10)
    stamp = os.path.getmtime(os.path.join(d1, "encoder.onnx"))
    assert ensure_export(model_dir("conformer_2021"), beam_size=10) == d1
    assert os.path.getmtime(os.path.join(d1, "encoder.onnx")) == stamp  # not exported again
    d2 = ensure_export(model_dir("conformer_2021"), beam_size=10, ctc_weight=0.5)
    assert d2 != d1 and os.path.exists(os.path.join(d2, "decoder.onnx"))
