"""Graph passes (wenet_triton/trt/graph_passes.py): fewer nodes, same outputs in onnxruntime."""
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import MODELS

pytest.importorskip("onnx_graphsurgeon")
from wenet_triton.trt import graph_passes  # noqa: E402


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODELS)
def test_passes_keep_outputs(name, exports):
    from wenet_triton.contract import EngineSettings
    from wenet_triton.engines.export import _dummy_decoder_inputs

    settings = EngineSettings.load(exports[name])
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
    names, _ = settings.decoder_io()
    full = {"encoder_out": eo, "encoder_out_lens": el, "hyps_pad_sos_eos": hyps.numpy(),
            "hyps_lens_sos": hl.numpy(), "r_hyps_pad_sos_eos": rhyps.numpy(), "ctc_score": sc.numpy()}
    feed = {k: full[k] for k in names}
    (ba, sa), (bb, sb) = _session(dec).run(None, feed), _session(dec_opt).run(None, feed)
    assert np.array_equal(ba, bb) and np.abs(sa - sb).max() <= 1e-4 * max(1, np.abs(sa).max())


_PLUGIN_OPS = []


def _plugin_session(model):
    """onnxruntime session where the plugin nodes run as Python custom ops computing the
    kernels' references (wenet_triton.kernels.ref_*), as TensorRT would run the plugins."""
    ox = pytest.importorskip("onnxruntime_extensions")
    import onnxruntime as ort

    from wenet_triton.engines import kernels

    if not _PLUGIN_OPS:
        f32, i64 = ox.PyCustomOpDef.dt_float, ox.PyCustomOpDef.dt_int64

        @ox.onnx_op(op_type="WenetAddLayerNorm", inputs=[f32] * 4, outputs=[f32, f32],
                    attrs={"epsilon": f32, "alpha": f32})
        def add_layernorm(x, d, g, b, **attrs):
            s, y = kernels.ref_add_layernorm(*(torch.from_numpy(np.asarray(a)) for a in (x, d)),
                                             attrs["alpha"], torch.from_numpy(g),
                                             torch.from_numpy(b), attrs["epsilon"])
            return s.numpy(), y.numpy()

        @ox.onnx_op(op_type="WenetLogSoftmaxTopK", inputs=[f32], outputs=[f32, f32, i64],
                    attrs={"k": i64})
        def log_softmax_topk(x, **attrs):
            logp, v, i = kernels.ref_log_softmax_topk(torch.from_numpy(x), int(attrs["k"]), True)
            return logp.numpy(), v.numpy(), i.numpy()

        @ox.onnx_op(op_type="WenetGluDwConv", inputs=[f32, ox.PyCustomOpDef.dt_int32] + [f32] * 5,
                    outputs=[f32], attrs={"causal": i64, "has_layer_norm": i64, "epsilon": f32})
        def glu_dwconv(h, lens, w, bias, pad, gamma, beta, **attrs):
            t = [torch.from_numpy(np.asarray(a)) for a in (h, lens, w, bias, pad, gamma, beta)]
            ln = bool(attrs["has_layer_norm"])
            return kernels.ref_glu_dwconv(*t[:5], t[5] if ln else None, t[6] if ln else None,
                                          bool(attrs["causal"]), attrs["epsilon"]).numpy()

        @ox.onnx_op(op_type="WenetRelPosAttention", inputs=[f32] * 6, outputs=[f32],
                    attrs={"scale": f32})
        def rel_pos_attention(qu, k, v, bias, qv, p, **attrs):
            t = [torch.from_numpy(np.asarray(a)) for a in (qu, k, v, bias, qv, p)]
            return kernels.ref_attention(*t, attrs["scale"]).numpy()

        _PLUGIN_OPS.extend([add_layernorm, log_softmax_topk, glu_dwconv, rel_pos_attention])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.register_custom_ops_library(ox.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODELS)
def test_plugin_nodes_compute_the_same(name, exports):
    enc = onnx.load(os.path.join(exports[name], "encoder.onnx"))
    fused, rep = graph_passes.optimize(enc, plugin_nodes=True, attention_plugin=True)
    onnx.checker.check_model(fused)
    assert rep["log_softmax_topk_plugins"] == 1 and rep["add_layernorm_plugins"] >= 8
    blocks = sum(1 for n in enc.graph.node if n.name.endswith("depthwise_conv/Conv"))
    assert blocks and rep["conv_module_plugins"] == blocks  # every conv module
    assert rep["by_op_after"].get("LogSoftmax", 0) == 0 and rep["by_op_after"].get("TopK", 0) == 0
    softmaxes = sum(1 for n in enc.graph.node if n.op_type == "Softmax")
    assert rep["attention_plugins"] == softmaxes == blocks  # every self-attention
    assert rep["by_op_after"].get("Softmax", 0) == 0
    a, b = _session(enc), _plugin_session(fused)
    g = np.random.default_rng(1)
    for B, T in [(1, 67), (3, 301)]:
        feed = {"speech": (g.standard_normal((B, T, 80)) * 3 + 10).astype(np.float32),
                "speech_lengths": np.linspace(T, max(7, T // 2), B).astype(np.int32)}
        ref, out = a.run(None, feed), b.run(None, feed)
        names = [o.name for o in enc.graph.output]
        for n, x, y in zip(names, ref, out):
            assert x.shape == y.shape, n
            if n == "beam_log_probs_idx":  # ties aside, the same tokens
                assert (x == y).mean() > 0.999, n
            else:
                assert np.abs(x.astype(np.float64) - y).max() <= 1e-4 * max(1.0, np.abs(x).max()), n
