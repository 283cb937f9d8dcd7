"""Graph passes (build_engines/graph_passes.py): fewer nodes, same outputs in onnxruntime."""
import os
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import MODELS, ROOT

pytest.importorskip("onnx_graphsurgeon")
sys.path.insert(0, os.path.join(ROOT, "build_engines"))
import graph_passes  # noqa: E402


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODELS)
def test_passes_keep_outputs(name, exports):
    from wenet_triton.engines import load_settings
    from wenet_triton.export import _dummy_decoder_inputs, decoder_io

    settings = load_settings(exports[name])
    enc = onnx.load(os.path.join(exports[name], "encoder.onnx"))
    enc_opt, rep = graph_passes.optimize(enc)
    onnx.checker.check_model(enc_opt)
    assert rep["nodes_after"] < rep["nodes_before"] and "Constant" not in rep["by_op_after"]
    a, b = _session(enc), _session(enc_opt)
    g = np.random.default_rng(0)
    for B, T in [(1, 67), (3, 301), (2, 1003)]:
        feed = {"speech": (g.standard_normal((B, T, 80)) * 3 + 10).astype(np.float32),
                "speech_lengths": np.linspace(T, max(7, T // 2), B).astype(np.int32)}
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            assert x.shape == y.shape and np.abs(x.astype(np.float64) - y).max() <= 1e-4
    eo, el = a.run(["encoder_out", "encoder_out_lens"], feed)
    dec = onnx.load(os.path.join(exports[name], "decoder.onnx"))
    dec_opt, rep = graph_passes.optimize(dec)
    assert rep["nodes_after"] < rep["nodes_before"]
    hyps, hl, rhyps, sc = _dummy_decoder_inputs(torch.from_numpy(eo), torch.from_numpy(el), settings, 11)
    names, _ = decoder_io(settings)
    full = {"encoder_out": eo, "encoder_out_lens": el, "hyps_pad_sos_eos": hyps.numpy(),
            "hyps_lens_sos": hl.numpy(), "r_hyps_pad_sos_eos": rhyps.numpy(), "ctc_score": sc.numpy()}
    feed = {k: full[k] for k in names}
    (ba, sa), (bb, sb) = _session(dec).run(None, feed), _session(dec_opt).run(None, feed)
    assert np.array_equal(ba, bb) and np.abs(sa - sb).max() <= 1e-4 * max(1, np.abs(sa).max())
