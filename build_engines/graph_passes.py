#!/usr/bin/env python3
"""ONNX graph passes before TensorRT (onnx-graphsurgeon), with a node-count report.

    python build_engines/graph_passes.py onnx/encoder.onnx onnx/encoder.opt.onnx --report rep.json

Passes (each keeps the graph's outputs identical up to float rounding; tests run both graphs
in onnxruntime and compare):
  1. constant folding (the positional-table arithmetic on the symbolic length, mask shapes);
  2. Transpose chains composed into one Transpose, identity permutations removed;
  3. Reshape chains collapsed to the last Reshape, Identity/no-op Cast removed;
  4. cleanup + topological sort;
  5. with --plugin-nodes (after shape inference): residual Add + LayerNormalization -> WenetAddLayerNorm, and the CTC
     LogSoftmax + TopK -> WenetLogSoftmaxTopK, nodes that TensorRT's ONNX parser resolves to
     the plugins of plugins/trt/ (load libwenet_trt_plugins.so; build_trt.py --plugins).
     Tests run these graphs in onnxruntime with the same ops as Python custom ops
     (onnxruntime-extensions) computing the kernels' reference math.
LayerNorm needs no pass: the opset-17 export already emits LayerNormalization nodes.
Not done yet: the conv-module (WenetGluDwConv) and rel-pos attention subgraphs as plugin nodes.
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


def optimize(model: onnx.ModelProto, plugin_nodes: bool = False) -> (onnx.ModelProto, Dict):
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
                   help="put WenetAddLayerNorm / WenetLogSoftmaxTopK plugin nodes in the graph")
    a = p.parse_args(argv)
    model, report = optimize(onnx.load(a.input), a.plugin_nodes)
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
