#!/usr/bin/env python3
"""ONNX graph passes before TensorRT (onnx-graphsurgeon), with a node-count report.

    python build_engines/graph_passes.py onnx/encoder.onnx onnx/encoder.opt.onnx --report rep.json

Passes (each keeps the graph's outputs identical up to float rounding; tests run both graphs
in onnxruntime and compare):
  1. constant folding (the positional-table arithmetic on the symbolic length, mask shapes);
  2. Transpose chains composed into one Transpose, identity permutations removed;
  3. Reshape chains collapsed to the last Reshape, Identity/no-op Cast removed;
  4. cleanup + topological sort.
LayerNorm needs no pass: the opset-17 export already emits LayerNormalization nodes.
Not done yet: replacing the rel-pos attention subgraph with a plugin node.
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


def optimize(model: onnx.ModelProto) -> (onnx.ModelProto, Dict):
    import onnx_graphsurgeon as gs

    before = _counts(model)
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    stats = {"transposes_removed": compose_transposes(graph)}
    graph.cleanup()
    stats["reshape_identity_cast_removed"] = collapse_reshapes(graph)
    graph.cleanup().toposort()
    graph.fold_constants().cleanup()
    out = gs.export_onnx(graph)
    after = _counts(out)
    report = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
              "by_op_before": before, "by_op_after": after, **stats}
    return out, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--report", help="write the node-count report (JSON) here")
    a = p.parse_args(argv)
    model, report = optimize(onnx.load(a.input))
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
