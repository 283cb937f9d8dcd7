"""Serving subcommands of `wenet-triton`: build-repo, serve."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from wenet_triton.bench import run
from wenet_triton.contract import REPO_ENGINES
from wenet_triton.decode.options import from_args
from wenet_triton.engines.export import export_onnx
from wenet_triton.engines.kernels import build
from wenet_triton.paths import cache_root
from wenet_triton.serving.repo import build_repo, parse_gpus, visible_gpus
from wenet_triton.serving.server import ServerError
from wenet_triton.serving.supervisor import Supervisor, SupervisorConfig
from wenet_triton.trt import build as trt_build

log = logging.getLogger("wenet_triton")


def _repo_args(p, model_arg, weights_args):
    model_arg(p)
    p.add_argument("--engine", default="onnxruntime",
                   choices=REPO_ENGINES,
                   help="engine inside the encoder/decoder models (torch_cuda: GPU, fp16, fused "
                   "kernels, run `wenet-triton build-plugins` first; tensorrt: plans from "
                   "`wenet-triton build --engine tensorrt`, give --engine-dir)")
    p.add_argument("--engine-dir", help="use this export/build directory instead of the cache")
    p.add_argument("--config", help="serving YAML overriding the templates' serving.yaml "
                   "(batch sizes, queue delays, instances, max audio length)")
    p.add_argument("--max-batch-size", type=int, help="override max_batch_size")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="the `streaming` model's chunk (encoder frames; default: the serving "
                   "config's streaming.chunk_size, 16)")
    p.add_argument("--left-chunks", type=int, default=None,
                   help="the `streaming` model's attention cache in chunks (finite, > 0; default: "
                   "streaming.left_chunks, 4)")
    p.add_argument("--gpus", type=_gpus_arg, metavar="IDS|all",
                   help="serve on these GPUs, e.g. 0,1 (all: every visible GPU): the GPU models "
                   "(torch_cuda encoder/decoder) get their `instances` on each "
                   "(docs/multigpu.md; default: one GPU, or the config's `gpus`)")
    weights_args(p, lm=True)


def _gpus_arg(text):
    try:
        gpus = parse_gpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if gpus is None:
        raise argparse.ArgumentTypeError("give device ids like 0,1 or all")
    return gpus


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1 (--no-guard: no front)")
    return n


def _check_gpus_visible(gpus):
    """serve starts tritonserver here: every listed GPU must exist on this host."""
    n = visible_gpus()
    missing = [g for g in gpus if g >= n]
    if missing:
        sys.exit(f"wenet-triton serve: error: --gpus {','.join(map(str, gpus))}: GPU "
                 f"{','.join(map(str, missing))} not visible here ({n} visible"
                 + (f": ids 0..{n - 1})" if n else ")"))


def _build(a, out):
    over = {"max_batch_size": a.max_batch_size} if a.max_batch_size else {}
    if a.beam_size:
        over["beam_size"] = a.beam_size
    stream = {k: v for k, v in (("chunk_size", a.chunk_size), ("left_chunks", a.left_chunks))
              if v is not None}
    if stream:
        over["streaming"] = stream
    if a.gpus:
        over["gpus"] = a.gpus
    return build_repo(a.model, out, a.engine, a.config, over, engine_dir=a.engine_dir,
                      ctc_weight=a.ctc_weight, reverse_weight=a.reverse_weight,
                      decoding=from_args(a))


def cmd_build_repo(a):
    _build(a, a.out)
    print(f"wrote {a.out}: serve it with `wenet-triton serve --repo {a.out}`")


def cmd_serve(a):
    repo = a.repo
    if a.gpus and repo is not None:
        sys.exit("wenet-triton serve: error: --gpus renders the repository: give it with --model "
                 "(or to `build-repo`), not with --repo")
    if a.gpus:
        _check_gpus_visible(a.gpus)
    if repo is None:
        if a.model is None:
            sys.exit("serve: give --model DIR or --repo REPO")
        repo = os.path.join(cache_root(), "repos",
                            os.path.basename(os.path.abspath(a.model)) + f"-{a.engine}")
        _build(a, repo)
    sup = Supervisor(SupervisorConfig(
        repo, host=a.host, grpc_port=a.grpc_port, http_port=a.http_port or None,
        metrics_port=a.metrics_port, health_port=a.health_port or None, guard=not a.no_guard,
        guard_workers=a.guard_workers,
        probe_interval=a.probe_interval, probe_timeout=a.probe_timeout,
        restart_after=a.restart_after, drain_timeout=a.drain_timeout,
        ready_timeout=a.ready_timeout, log_verbose=a.log_verbose, mps=a.mps))

    def _stop(signum, _frame):  # only signal here; the main thread drains and stops
        sup.request_stop(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"serving {repo} on gRPC {a.host}:{a.grpc_port} (HTTP "
          f"{a.http_port or 'off'}, metrics {a.metrics_port}, health "
          + (f"http://{a.host}:{a.health_port}/healthz" if a.health_port else "off")
          + f"); transcribe with: wenet-triton transcribe --server "
          f"{'localhost' if a.host in ('0.0.0.0', '127.0.0.1') else a.host}:{a.grpc_port} WAV..."
          + ("; stream with: wenet-triton stream --server "
             f"{'localhost' if a.host in ('0.0.0.0', '127.0.0.1') else a.host}:{a.grpc_port} WAV..."
             if os.path.isdir(os.path.join(repo, "streaming")) else ""),
          flush=True)
    try:
        code = sup.run()
    except ServerError as e:
        sys.exit(f"wenet-triton serve: error: {e}")
    sys.exit(code)


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
    be.add_argument("--engines", default="eager_fp32,eager_fp16,onnxruntime_cpu,torch_cuda_nokernels,torch_cuda",
                    help="comma-separated; torch_cuda uses the engine's Triton-lang kernels where "
                         "they apply (WENET_TRITON_FUSED_*=0 turns one off); also torch_cuda_cublas "
                         "(none of them: the A/B baseline), torch_cuda_silu (the SiLU GEMM only), "
                         "torch_cuda_fused (the five, whatever the environment), torch_cuda_conv "
                         "(the defaults + the opt-in implicit-GEMM subsampling convolutions), "
                         "torch_cuda_fp8 (the defaults + the encoder's FFNs in FP8, scales from the "
                         "benchmark's features)")
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
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind gRPC, HTTP, metrics and health (default loopback only; "
                   "0.0.0.0 inside a container network)")
    s.add_argument("--http-port", type=int, default=None,
                   help="Triton's HTTP/REST endpoint on this port (default: off; it has no "
                   "request checks in front of it, see docs/reliability.md)")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--health-port", type=int, default=8003,
                   help="supervisor health endpoint GET /healthz: 200 only while a real "
                   "inference probe passes (0: off)")
    s.add_argument("--no-guard", action="store_true",
                   help="expose tritonserver's gRPC directly instead of the checking front "
                   "(faster; loses request checks and drain of newcomers)")
    s.add_argument("--guard-workers", type=_positive_int, default=None, metavar="N",
                   help="checking front processes sharing the gRPC port (SO_REUSEPORT; the kernel "
                   "spreads connections over them); default: the serving config's guard_workers, "
                   "auto = min(4, cores // 4), at least 1")
    s.add_argument("--mps", action=argparse.BooleanOptionalAction, default=None,
                   help="run a CUDA MPS control daemon of this server's own (private pipe "
                   "directory) so the model instances' GPU kernels run side by side instead of "
                   "in time slices; needs nvidia-cuda-mps-control (docs/design.md, MPS). "
                   "Default: the serving config's mps (false; auto in configs/serving_gpu.yaml: "
                   "on where the control program and a GPU are there)")
    s.add_argument("--probe-interval", type=float, default=5.0, help="seconds between probes")
    s.add_argument("--probe-timeout", type=float, default=30.0)
    s.add_argument("--restart-after", type=int, default=3,
                   help="failed probes in a row before tritonserver is restarted")
    s.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to wait for in-flight requests")
    s.add_argument("--ready-timeout", type=float, default=300.0)
    s.add_argument("--log-verbose", type=int, default=0)
    s.set_defaults(func=cmd_serve)
    return sub
