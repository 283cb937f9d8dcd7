"""The package's layers import in one direction only, with no cycles, and defer an import to
a function only for the optional heavy dependencies listed here (each with its reason)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "wenet_triton")

# lower layers first; a module may import its own layer or any layer below it
LAYERS = [
    {"contract", "paths"},
    {"audio", "decode"},
    {"model"},
    {"engines"},
    {"pipeline", "bench", "streaming"},
    {"serving", "trt"},
    {"cli", "cli_serving", "cli_client", "cli_stream", "api", "__init__"},
]

# imports that may stay inside a function, and why
LAZY_OK = {
    "torch": "the knf CPU fbank path and the Triton CPU stubs run without loading torch",
    "wenet_triton.audio.torch_fbank": "imports torch (see torch)",
    "wenet_triton.engines": "imports torch: the Triton stubs that run no engine (CPU fbank, search) stay without it",
    "onnx_graphsurgeon": "only for the TensorRT graph passes (extra 'trt')",
    "tensorrt": "only on hosts with TensorRT (NVIDIA's images)",
    "matplotlib": "plots only (extra 'loadtest')",
    "tritonclient": "the gRPC client (serving), not needed offline",
    "triton_python_backend_utils": "exists only inside Triton's python backend stub",
    "pytriton": "located, not imported: its __init__ pulls in many packages",
    "scipy": "resampling only; scipy.signal's import is slow and ties scipy to the numpy it was built for",
    "soundfile": "optional: PCM wav falls back to the standard library",
}


def _modules():
    for dirpath, dirnames, files in os.walk(PKG):
        dirnames[:] = [d for d in dirnames if d not in ("templates", "__pycache__", "csrc", "samples")]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if rel.endswith(".__init__"):
                    rel = rel[: -len(".__init__")]
                yield rel, path


def _layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{mod} belongs to no layer: add it to LAYERS")


def _imports(path):
    """-> (module-level imports, in-function imports) as (name, line) lists."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    top, lazy = [], []

    def names(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import (use wenet_triton.*)")
        base = node.module or ""
        if base == "wenet_triton":
            return [f"wenet_triton.{a.name}" for a in node.names]
        return [base]

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    lazy += [(n, sub.lineno) for n in names(sub)]
    lazy_lines = {ln for _, ln in lazy}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in lazy_lines:
            top += [(n, node.lineno) for n in names(node)]
    return top, lazy


def _resolve(name, known):
    """wenet_triton.x.y.Name -> the longest known module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def test_layers_import_downward_only_and_without_cycles():
    mods = dict(_modules())
    graph, problems = {}, []
    for mod, path in mods.items():
        top, _ = _imports(path)
        deps = set()
        for name, line in top:
            if not name.startswith("wenet_triton"):
                continue
            dep = _resolve(name, mods)
            if dep is None or dep == mod or mod.startswith(dep + ".") and dep == "wenet_triton":
                continue
            if dep == "wenet_triton" and mod != "wenet_triton":
                problems.append(f"{path}:{line}: imports the package root (the public API)")
                continue
            if _layer(dep) > _layer(mod):
                problems.append(f"{path}:{line}: {mod} (layer {_layer(mod)}) imports {dep} "
                                f"(layer {_layer(dep)}): upward")
            deps.add(dep)
        graph[mod] = deps
    # cycles (also within a layer); a package __init__ importing its own modules is fine
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if m.startswith(d + ".") or d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not problems, "\n".join(problems)


def test_in_function_imports_are_only_optional_heavy_dependencies():
    problems = []
    for mod, path in _modules():
        _, lazy = _imports(path)
        for name, line in lazy:
            if not any(name == k or name.startswith(k + ".") for k in LAZY_OK):
                problems.append(f"{path}:{line}: `{name}` imported inside a function")
    assert not problems, "\n".join(problems)


def test_the_layer_test_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a contract module importing the engines is reported."""
    pkg = tmp_path / "wenet_triton"
    (pkg / "engines").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engines" / "__init__.py").write_text("from wenet_triton.contract import X\n")
    (pkg / "contract.py").write_text("from wenet_triton.engines import Y\n"
                                     "def f():\n    import json\n")
    monkeypatch.setattr(__import__(__name__), "PKG", str(pkg))
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    with pytest.raises(AssertionError, match="upward"):
        test_layers_import_downward_only_and_without_cycles()
    with pytest.raises(AssertionError, match="`json` imported inside a function"):
        test_in_function_imports_are_only_optional_heavy_dependencies()
