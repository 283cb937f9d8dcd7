"""Serving subcommands of `wenet-triton`: build-repo, serve."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from wenet_triton.bench import run
from wenet_triton.decode.options import from_args
from wenet_triton.engines.export import export_onnx
from wenet_triton.engines.kernels import build
from wenet_triton.paths import cache_root
from wenet_triton.serving.repo import build_repo
from wenet_triton.serving.server import ServerError, TritonServer
from wenet_triton.trt import build as trt_build

log = logging.getLogger("wenet_triton")


def _repo_args(p, model_arg, weights_args):
    model_arg(p)
    p.add_argument("--engine", default="onnxruntime",
                   choices=["onnxruntime", "torch", "torch_cuda", "tensorrt"],
                   help="engine inside the encoder/decoder models (torch_cuda: GPU, fp16, fused "
                   "kernels, run `wenet-triton build-plugins` first; tensorrt: plans from "
                   "`wenet-triton build --engine tensorrt`, give --engine-dir)")
    p.add_argument("--engine-dir", help="use this export/build directory instead of the cache")
    p.add_argument("--config", help="serving YAML overriding the templates' serving.yaml "
                   "(batch sizes, queue delays, instances, max audio length)")
    p.add_argument("--max-batch-size", type=int, help="override max_batch_size")
    weights_args(p, lm=True)


def _build(a, out):
    over = {"max_batch_size": a.max_batch_size} if a.max_batch_size else {}
    if a.beam_size:
        over["beam_size"] = a.beam_size
    return build_repo(a.model, out, a.engine, a.config, over, engine_dir=a.engine_dir,
                      ctc_weight=a.ctc_weight, reverse_weight=a.reverse_weight,
                      decoding=from_args(a))


def cmd_build_repo(a):
    _build(a, a.out)
    print(f"wrote {a.out}: serve it with `wenet-triton serve --repo {a.out}`")


def cmd_serve(a):
    repo = a.repo
    if repo is None:
        if a.model is None:
            sys.exit("serve: give --model DIR or --repo REPO")
        repo = os.path.join(cache_root(), "repos",
                            os.path.basename(os.path.abspath(a.model)) + f"-{a.engine}")
        _build(a, repo)
    server = TritonServer(repo, a.http_port, a.grpc_port, a.metrics_port, a.host,
                          log_verbose=a.log_verbose)

    stopping = []

    def _stop(signum, _frame):  # only signal here; the main thread reaps the server
        log.info("signal %d: stopping Triton", signum)
        stopping.append(signum)
        server.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    try:
        server.start(a.ready_timeout)
    except ServerError:
        server.stop()
        if stopping:
            sys.exit(0)
        raise
    print(f"serving {repo} on gRPC {a.host}:{a.grpc_port} (HTTP {a.http_port}, metrics "
          f"{a.metrics_port}); transcribe with: wenet-triton transcribe --server "
          f"localhost:{a.grpc_port} WAV...", flush=True)
    code = server.proc.wait()
    server.stop()
    if stopping:
        sys.exit(0)
    log.error("tritonserver exited with code %d", code)
    sys.exit(code or 1)


def cmd_build_plugins(a):
    path = build(a.out, a.arch.split(",") if a.arch else None)
    print(f"built {path}")


def cmd_build(a):
    """Offline build of an engine's artifacts into one directory."""
    s = export_onnx(a.model, a.out, from_args(a).beam_size, a.ctc_weight, a.reverse_weight)
    print(f"exported ONNX to {a.out} (verified: {', '.join(s.get('verification', {}))})")
    if a.engine == "torch_cuda":
        print(f"built {build(os.path.join(a.out, 'libwenet_kernels.so'))}")
    elif a.engine == "tensorrt":

        trt_build.main(["--export-dir", a.out, "--fp16"] + (["--int8", "--calib-wavs", a.calib_wavs]
                                                      if a.int8 else []) + a.trt_args)


def cmd_bench(a):
    path = run(a.out, a.models, [int(x) for x in a.batches.split(",")],
               [float(x) for x in a.seconds.split(",")], a.engines.split(","), a.iters,
               device=a.device)
    print(f"wrote {path} and plots in {a.out}")


def add_commands(sub, model_arg, weights_args):
    bp = sub.add_parser("build-plugins", help="compile csrc/wenet_kernels.cu into the kernel .so (csrc/build.sh)")
    bp.add_argument("--out", help="output .so (default: $WENET_KERNELS_LIB, else the cache)")
    bp.add_argument("--arch", help="comma-separated SM versions, e.g. 90,80 (default: this GPU)")
    bp.set_defaults(func=cmd_build_plugins)

    bd = sub.add_parser("build", help="build an engine's artifacts (ONNX, kernel .so, TensorRT plans)")
    model_arg(bd)
    bd.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "torch_cuda", "tensorrt"])
    bd.add_argument("--out", required=True)
    weights_args(bd)
    bd.add_argument("--int8", action="store_true", help="tensorrt: INT8 encoder (needs --calib-wavs)")
    bd.add_argument("--calib-wavs", help="tensorrt INT8 calibration audio")
    bd.add_argument("--trt-args", nargs=argparse.REMAINDER, default=[],
                    help="further arguments for wenet_triton/trt/build.py")
    bd.set_defaults(func=cmd_build)

    be = sub.add_parser("bench", help="model-level latency/throughput per engine (CSV + plots)")
    be.add_argument("--out", default="bench_out")
    be.add_argument("--models", nargs="+", default=["aishell"],
                    help="'aishell' (random weights, AISHELL shape) and/or WeNet model dirs")
    be.add_argument("--engines", default="eager_fp32,eager_fp16,onnxruntime_cpu,torch_cuda_nokernels,torch_cuda")
    be.add_argument("--batches", default="1,4,8,16,32,64")
    be.add_argument("--seconds", default="5,10,20")
    be.add_argument("--iters", type=int, default=20)
    be.add_argument("--device", default="cuda")
    be.set_defaults(func=cmd_bench)

    b = sub.add_parser("build-repo", help="render the Triton model repository for a model")
    _repo_args(b, model_arg, weights_args)
    b.add_argument("--out", required=True, help="repository directory to (re)create")
    b.set_defaults(func=cmd_build_repo)

    s = sub.add_parser("serve", help="run tritonserver in the foreground (Ctrl-C stops it)")
    _repo_args(s, model_arg, weights_args)
    s.add_argument("--repo", help="serve this rendered repository instead of building one")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--ready-timeout", type=float, default=300.0)
    s.add_argument("--log-verbose", type=int, default=0)
    s.set_defaults(func=cmd_serve)
    return sub
