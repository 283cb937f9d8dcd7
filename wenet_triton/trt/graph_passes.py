#!/usr/bin/env python3
"""ONNX graph passes before TensorRT (onnx-graphsurgeon), with a node-count report.

    python3 -m wenet_triton.trt.graph_passes onnx/encoder.onnx onnx/encoder.opt.onnx --report rep.json

Passes (each keeps the graph's outputs identical up to float rounding; tests run both graphs
in onnxruntime and compare):
  1. constant folding (the positional-table arithmetic on the symbolic length, mask shapes);
  2. Transpose chains composed into one Transpose, identity permutations removed;
  3. Reshape chains collapsed to the last Reshape, Identity/no-op Cast removed;
  4. cleanup + topological sort;
  5. with --plugin-nodes (after shape inference): residual Add + LayerNormalization ->
     WenetAddLayerNorm, the conformer conv module (pointwise_conv1 .. swish) ->
     WenetGluDwConv, the CTC LogSoftmax + TopK -> WenetLogSoftmaxTopK: nodes that TensorRT's
     ONNX parser resolves to the plugins of csrc/wenet_trt_plugins.cpp (load libwenet_trt_plugins.so;
     build_trt.py --plugins); with --attention-plugin also the encoder's (rel-pos)
     self-attention -> WenetRelPosAttention.
     Tests run these graphs in onnxruntime with the same ops as Python custom ops
     (onnxruntime-extensions) computing the kernels' reference math.
LayerNorm needs no pass: the opset-17 export already emits LayerNormalization nodes.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Dict

import numpy as np
import onnx


def _counts(model: onnx.ModelProto) -> Dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _consumers(graph):
    out = {}
    for node in graph.nodes:
        for t in node.inputs:
            out.setdefault(t.name, []).append(node)
    return out


def _bypass(graph, node):
    """Route node's consumers to its input and detach it (cleanup removes it)."""
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs:  # keep graph output names: let the producer write them
        return False
    for consumer in list(dst.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is dst:
                consumer.inputs[i] = src
    node.outputs.clear()
    return True


def compose_transposes(graph) -> int:
    n = 0
    cons = _consumers(graph)
    for node in list(graph.nodes):
        if node.op != "Transpose" or not node.outputs:
            continue
        users = cons.get(node.outputs[0].name, [])
        if len(users) == 1 and users[0].op == "Transpose" and node.outputs[0] not in graph.outputs:
            nxt = users[0]
            p1, p2 = node.attrs["perm"], nxt.attrs["perm"]
            nxt.attrs["perm"] = [p1[i] for i in p2]
            nxt.inputs[0] = node.inputs[0]
            node.outputs.clear()
            n += 1
    cons = _consumers(graph)
    for node in list(graph.nodes):
        if node.op == "Transpose" and node.outputs and list(node.attrs.get("perm", [])) == \
                list(range(len(node.attrs.get("perm", [])))):
            n += _bypass(graph, node)
    return n


def collapse_reshapes(graph) -> int:
    n = 0
    cons = _consumers(graph)
    for node in list(graph.nodes):
        if node.op != "Reshape" or not node.outputs or node.outputs[0] in graph.outputs:
            continue
        users = cons.get(node.outputs[0].name, [])
        if users and all(u.op == "Reshape" for u in users):
            # Reshape(Reshape(x, s1), s2) == Reshape(x, s2) unless s2 uses 0 (copy-dim)
            ok = True
            for u in users:
                shape = getattr(u.inputs[1], "values", None)
                if shape is None or np.any(np.asarray(shape) == 0):
                    ok = False
            if ok:
                for u in users:
                    u.inputs[0] = node.inputs[0]
                node.outputs.clear()
                n += 1
    for node in list(graph.nodes):
        if node.op == "Identity" and node.outputs:
            n += _bypass(graph, node)
        elif node.op == "Cast" and node.outputs and node.inputs[0].dtype is not None and \
                node.inputs[0].dtype == node.outputs[0].dtype:
            n += _bypass(graph, node)
    return n


PLUGIN_DOMAIN = "ai.onnx.contrib"  # TensorRT's parser matches plugins by op type


def _const(t):
    return getattr(t, "values", None) is not None


def fuse_add_layernorm(graph, domain: str = PLUGIN_DOMAIN) -> int:
    """LayerNormalization(Add(x, d)) over the last axis, both Add inputs computed tensors of
    the same known shape -> WenetAddLayerNorm(x, d, gamma, beta) -> (x + d, LN(x + d))."""
    import onnx_graphsurgeon as gs

    n = 0
    for ln in list(graph.nodes):
        if ln.op != "LayerNormalization" or ln.attrs.get("axis", -1) != -1 or len(ln.inputs) != 3:
            continue
        src = ln.inputs[0]
        if len(src.inputs) != 1 or src.inputs[0].op != "Add" or len(ln.outputs) != 1:
            continue
        add = src.inputs[0]
        x, d = add.inputs
        if _const(x) or _const(d) or x.shape is None or d.shape is None or list(x.shape) != list(d.shape):
            continue
        if not (_const(ln.inputs[1]) and _const(ln.inputs[2])):
            continue
        node = gs.Node("WenetAddLayerNorm", name=f"{ln.name}_plugin", domain=domain,
                       attrs={"epsilon": float(ln.attrs.get("epsilon", 1e-5)), "alpha": 1.0},
                       inputs=[x, d, ln.inputs[1], ln.inputs[2]], outputs=[src, ln.outputs[0]])
        add.outputs.clear()
        ln.outputs.clear()
        graph.nodes.append(node)
        n += 1
    return n


def fuse_log_softmax_topk(graph, domain: str = PLUGIN_DOMAIN) -> int:
    """LogSoftmax (last axis) feeding only a TopK (last axis, largest, sorted, constant k)
    -> WenetLogSoftmaxTopK(logits) -> (log-probs, top-k values, top-k indices)."""
    import onnx_graphsurgeon as gs

    n = 0
    for ls in list(graph.nodes):
        if ls.op != "LogSoftmax" or not ls.outputs:
            continue
        out = ls.outputs[0]
        rank = len(out.shape) if out.shape is not None else None
        if ls.attrs.get("axis", -1) not in (-1, (rank or 0) - 1):
            continue
        topks = [c for c in out.outputs if c.op == "TopK"]
        if len(topks) != 1 or len(out.outputs) != 1:
            continue
        tk = topks[0]
        k = getattr(tk.inputs[1], "values", None)
        if k is None or tk.attrs.get("axis", -1) not in (-1, (rank or 0) - 1) \
                or tk.attrs.get("largest", 1) != 1 or tk.attrs.get("sorted", 1) != 1:
            continue
        node = gs.Node("WenetLogSoftmaxTopK", name=f"{ls.name}_plugin", domain=domain,
                       attrs={"k": int(np.asarray(k).reshape(-1)[0])},
                       inputs=[ls.inputs[0]], outputs=[out, tk.outputs[0], tk.outputs[1]])
        ls.outputs.clear()
        tk.outputs.clear()
        graph.nodes.append(node)
        n += 1
    return n


def _producer(t, op):
    """The node of type `op` that produces tensor t, or None."""
    if t is None or len(getattr(t, "inputs", [])) != 1:
        return None
    node = t.inputs[0]
    return node if node.op == op else None


def _sigmoid_gate(mul):
    """Mul(a, Sigmoid(b)) -> (a, b), else None."""
    if mul is None or mul.op != "Mul":
        return None
    a, b = mul.inputs
    for x, y in ((a, b), (b, a)):
        sig = _producer(y, "Sigmoid")
        if sig is not None:
            return x, sig.inputs[0]
    return None


def fuse_conv_module(graph, domain: str = PLUGIN_DOMAIN) -> int:
    """Conformer conv module, from the masked input of pointwise_conv1 to the swish before
    pointwise_conv2 -> Transpose, WenetGluDwConv, Transpose. Causal modules (left Pad before
    pointwise_conv1) pass glu(conv1 bias) as the pad value, as WeNet's padding gives; the
    plugin's frames past each length differ, and the module's final mask zeroes them."""
    import onnx_graphsurgeon as gs

    n, lens_of = 0, {}
    for swish in [x for x in graph.nodes if x.op == "Mul"]:
        gate = _sigmoid_gate(swish)
        if gate is None or gate[0] is not gate[1]:
            continue
        y = gate[0]
        ln = None
        tr = _producer(y, "Transpose")
        if tr is not None:  # Transpose -> LayerNormalization -> Transpose (layer_norm conv)
            ln = _producer(tr.inputs[0], "LayerNormalization")
            tr0 = ln and _producer(ln.inputs[0], "Transpose")
            if ln is None or tr0 is None or not (_const(ln.inputs[1]) and _const(ln.inputs[2])):
                continue
            y = tr0.inputs[0]
        dw = _producer(y, "Conv")
        if dw is None or not _const(dw.inputs[1]):
            continue
        w = np.asarray(dw.inputs[1].values)
        C, K = w.shape[0], w.shape[-1]
        if w.ndim != 3 or w.shape[1] != 1 or dw.attrs.get("group") != C:
            continue
        g_in = dw.inputs[0]
        mul = _producer(g_in, "Mul")
        glu = _sigmoid_gate(mul)
        if glu is None and mul is not None:  # non-causal: glu(...) * mask
            for t in mul.inputs:
                glu = glu or _sigmoid_gate(_producer(t, "Mul"))
        if glu is None:
            continue
        split_a, split_b = _producer(glu[0], "Split"), _producer(glu[1], "Split")
        if split_a is None or split_a is not split_b or split_a.attrs.get("axis") != 1 \
                or list(split_a.outputs) != [glu[0], glu[1]]:  # glu: first half * sigmoid(second)
            continue
        conv1 = _producer(split_a.inputs[0], "Conv")
        if conv1 is None or not _const(conv1.inputs[1]) or np.asarray(conv1.inputs[1].values).shape[-1] != 1:
            continue
        x = conv1.inputs[0]
        pad = _producer(x, "Pad")
        causal = pad is not None
        if causal:
            pads = getattr(pad.inputs[1], "values", None)
            if pads is None or list(np.asarray(pads)) != [0, 0, K - 1, 0, 0, 0]:
                continue
            x = pad.inputs[0]
        elif list(dw.attrs.get("pads", [0, 0])) != [(K - 1) // 2] * 2:
            continue
        masked = _producer(x, "Mul")
        if masked is None:
            continue
        mask = next((t for t in masked.inputs if t.shape is not None and len(t.shape) == 3
                     and t.shape[1] == 1), None)
        if mask is None:
            continue
        if mask.name not in lens_of:  # lens [B] int32 from the (B, 1, T) float mask
            s = gs.Variable(f"{mask.name}_sum", dtype=np.float32)
            lens = gs.Variable(f"{mask.name}_lens", dtype=np.int32)
            graph.nodes += [
                gs.Node("ReduceSum", inputs=[mask, gs.Constant(f"{mask.name}_axes", np.array([1, 2], np.int64))],
                        outputs=[s], attrs={"keepdims": 0}),
                gs.Node("Cast", inputs=[s], outputs=[lens], attrs={"to": onnx.TensorProto.INT32})]
            lens_of[mask.name] = lens
        b1 = np.asarray(conv1.inputs[2].values, np.float32) if len(conv1.inputs) > 2 else np.zeros(2 * C, np.float32)
        pad_value = b1[:C] / (1.0 + np.exp(-b1[C:]))  # glu(bias): what a zero input frame gives
        bias = np.asarray(dw.inputs[2].values, np.float32) if len(dw.inputs) > 2 else np.zeros(C, np.float32)
        gamma = np.asarray(ln.inputs[1].values, np.float32) if ln else np.ones(C, np.float32)
        beta = np.asarray(ln.inputs[2].values, np.float32) if ln else np.zeros(C, np.float32)
        tag = dw.name or f"conv_module_{n}"
        h_bct = gs.Variable(f"{tag}_h_bct", dtype=np.float32)
        h = gs.Variable(f"{tag}_h", dtype=np.float32)
        out_btc = gs.Variable(f"{tag}_out_btc", dtype=np.float32)
        const = lambda name, v: gs.Constant(f"{tag}_{name}", np.ascontiguousarray(v, np.float32))  # noqa: E731
        out = swish.outputs[0]
        swish.outputs.clear()
        graph.nodes += [
            gs.Node("Conv", name=f"{tag}_pw1", inputs=[x] + conv1.inputs[1:], outputs=[h_bct],
                    attrs={k: v for k, v in conv1.attrs.items()}),
            gs.Node("Transpose", inputs=[h_bct], outputs=[h], attrs={"perm": [0, 2, 1]}),
            gs.Node("WenetGluDwConv", name=f"{tag}_plugin", domain=domain,
                    attrs={"causal": int(causal), "has_layer_norm": int(ln is not None),
                           "epsilon": float(ln.attrs.get("epsilon", 1e-5)) if ln else 1e-5},
                    inputs=[h, lens_of[mask.name], const("w", w.reshape(C, K)), const("bias", bias),
                            const("pad", pad_value), const("gamma", gamma), const("beta", beta)],
                    outputs=[out_btc]),
            gs.Node("Transpose", inputs=[out_btc], outputs=[out], attrs={"perm": [0, 2, 1]})]
        n += 1
    return n


def _static_dim(t, i):
    d = None if t.shape is None or len(t.shape) <= i else t.shape[i]
    return d if isinstance(d, int) else None


def fuse_attention(graph, domain: str = PLUGIN_DOMAIN, max_head_dim: int = 128) -> int:
    """softmax((A Kt [+ C Pt]) / c + bias) V, the shape WeNet's (rel-pos) self-attention
    exports to -> WenetRelPosAttention(A, K, V, bias, C, P) or WenetAttention(A, K, V, bias)
    with K, P = Kt, Pt transposed back (the Transposes compose with the heads' transposes).
    Only where heads and head size are static (the encoder; the decoder's reshapes keep them
    symbolic, and TensorRT fuses plain attention itself)."""
    import onnx_graphsurgeon as gs

    n = 0
    for sm in [x for x in graph.nodes if x.op == "Softmax"]:
        out = sm.outputs[0]
        if sm.attrs.get("axis", -1) not in (-1, 3) or out.shape is None or len(out.shape) != 4:
            continue
        pv = out.outputs[0] if len(out.outputs) == 1 else None
        if pv is None or pv.op != "MatMul" or pv.inputs[0] is not out:
            continue
        add = _producer(sm.inputs[0], "Add")
        if add is None:
            continue
        div = bias = None
        for x, y in (add.inputs, add.inputs[::-1]):
            d = _producer(x, "Div")
            if d is not None and _const(d.inputs[1]) and np.asarray(d.inputs[1].values).size == 1 \
                    and not _const(y) and y.shape is not None and len(y.shape) == 4:
                div, bias = d, y
                break
        if div is None:
            continue
        scale = 1.0 / float(np.asarray(div.inputs[1].values).reshape(-1)[0])
        mm = _producer(div.inputs[0], "MatMul")
        terms = [mm] if mm is not None else None
        if terms is None:
            s2 = _producer(div.inputs[0], "Add")
            terms = s2 and [_producer(t, "MatMul") for t in s2.inputs]
        if not terms or any(t is None for t in terms) or len(terms) > 2:
            continue
        q = terms[0].inputs[0]
        H, dk = _static_dim(q, 1), _static_dim(q, 3)
        if H is None or dk is None or dk > max_head_dim \
                or any(_static_dim(t.inputs[0], 3) != dk or len(t.inputs[1].shape or ()) != 4 for t in terms):
            continue
        tag = sm.name or f"attention_{n}"

        def back(t, i):  # (b, H, dk, Tk) -> (b, H, Tk, dk)
            v = gs.Variable(f"{tag}_kp{i}", dtype=np.float32)
            graph.nodes.append(gs.Node("Transpose", inputs=[t], outputs=[v], attrs={"perm": [0, 1, 3, 2]}))
            return v

        inputs = [q, back(terms[0].inputs[1], 0), pv.inputs[1], bias]
        if len(terms) == 2:
            inputs += [terms[1].inputs[0], back(terms[1].inputs[1], 1)]
        res = pv.outputs[0]
        pv.outputs.clear()
        graph.nodes.append(gs.Node("WenetRelPosAttention" if len(terms) == 2 else "WenetAttention",
                                   name=f"{tag}_plugin", domain=domain, attrs={"scale": scale},
                                   inputs=inputs, outputs=[res]))
        n += 1
    return n


def optimize(model: onnx.ModelProto, plugin_nodes: bool = False,
             attention_plugin: bool = False) -> (onnx.ModelProto, Dict):
    """attention_plugin (with plugin_nodes): also the self-attention -> WenetRelPosAttention.
    Off by default: the kernel is exact but, on an H200, slower than the unfused math from
    ~64 x 125 frames up (benchmarks/results/h200/attention/attention_bench.txt)."""
    import onnx_graphsurgeon as gs

    before = _counts(model)
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    stats = {"transposes_removed": compose_transposes(graph)}
    graph.cleanup()
    stats["reshape_identity_cast_removed"] = collapse_reshapes(graph)
    graph.cleanup().toposort()
    graph.fold_constants().cleanup()
    if plugin_nodes:  # the fusions check shapes: infer them first
        graph = gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(graph)))
        stats["add_layernorm_plugins"] = fuse_add_layernorm(graph)
        stats["log_softmax_topk_plugins"] = fuse_log_softmax_topk(graph)
        stats["conv_module_plugins"] = fuse_conv_module(graph)
        stats["attention_plugins"] = fuse_attention(graph) if attention_plugin else 0
        graph.cleanup()
        stats["transposes_removed"] += compose_transposes(graph)  # K/P back to (b, H, T, dk)
        graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if plugin_nodes and not any(o.domain == PLUGIN_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, 1))
    after = _counts(out)
    report = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
              "by_op_before": before, "by_op_after": after, **stats}
    return out, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--report", help="write the node-count report (JSON) here")
    p.add_argument("--plugin-nodes", action="store_true",
                   help="put WenetAddLayerNorm / WenetGluDwConv / WenetLogSoftmaxTopK plugin nodes in the graph")
    p.add_argument("--attention-plugin", action="store_true",
                   help="with --plugin-nodes: self-attention -> WenetRelPosAttention too (exact, but "
                        "slower than the unfused math at long inputs on an H200)")
    a = p.parse_args(argv)
    model, report = optimize(onnx.load(a.input), a.plugin_nodes, a.attention_plugin)
    onnx.checker.check_model(model)
    onnx.save(model, a.output)
    print(f"{a.input}: {report['nodes_before']} -> {report['nodes_after']} nodes")
    for op in sorted(set(report["by_op_before"]) | set(report["by_op_after"])):
        b, c = report["by_op_before"].get(op, 0), report["by_op_after"].get(op, 0)
        if b != c:
            print(f"  {op:24} {b:5} -> {c}")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
