"""Serving subcommands of `wenet-triton`: build-repo, serve."""
from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger("wenet_triton")


def _repo_args(p, model_arg, weights_args):
    model_arg(p)
    p.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="engine inside the encoder/decoder models")
    p.add_argument("--config", help="serving YAML overriding model_repo/serving.yaml "
                   "(batch sizes, queue delays, instances, max audio length)")
    p.add_argument("--max-batch-size", type=int, help="override max_batch_size")
    p.add_argument("--ctc-weight", type=float, default=None,
                   help="CTC weight in attention rescoring (default: train.yaml)")
    p.add_argument("--reverse-weight", type=float, default=None,
                   help="right-to-left decoder weight (default: train.yaml)")


def _build(a, out):
    from .repo import build_repo

    over = {"max_batch_size": a.max_batch_size} if a.max_batch_size else None
    return build_repo(a.model, out, a.engine, a.config, over, ctc_weight=a.ctc_weight,
                      reverse_weight=a.reverse_weight)


def cmd_build_repo(a):
    _build(a, a.out)
    print(f"wrote {a.out}: serve it with `wenet-triton serve --repo {a.out}`")


def cmd_serve(a):
    from .artifacts import cache_root
    from .server import TritonServer

    repo = a.repo
    if repo is None:
        if a.model is None:
            sys.exit("serve: give --model DIR or --repo REPO")
        repo = os.path.join(cache_root(), "repos",
                            os.path.basename(os.path.abspath(a.model)) + f"-{a.engine}")
        _build(a, repo)
    server = TritonServer(repo, a.http_port, a.grpc_port, a.metrics_port, a.host,
                          log_verbose=a.log_verbose)

    def _stop(signum, _frame):
        log.info("signal %d: stopping Triton", signum)
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start(a.ready_timeout)
    print(f"serving {repo} on gRPC {a.host}:{a.grpc_port} (HTTP {a.http_port}, metrics "
          f"{a.metrics_port}); transcribe with: python client/transcribe.py --server "
          f"localhost:{a.grpc_port} WAV...", flush=True)
    code = server.proc.wait()
    log.error("tritonserver exited with code %d", code)
    sys.exit(code or 1)


def add_commands(sub, model_arg, weights_args):
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
