#!/usr/bin/env bash
# Container start: render the Triton repository for $MODEL_DIR with $ENGINE (exports and
# CUDA-graph buckets are built on the host's GPU at first use; exports are cached in the
# /cache volume), then serve gRPC 8001, metrics 8002 and the supervisor's health on 8003 until
# stopped (HTTP: pass --http-port 8000). 0.0.0.0 is the container's own network.
set -euo pipefail
if [ ! -f "$MODEL_DIR/train.yaml" ]; then
  echo "no WeNet model at MODEL_DIR=$MODEL_DIR (mount a dir with train.yaml, final.pt, units.txt, global_cmvn)" >&2
  exit 2
fi
if [ "$ENGINE" = tensorrt ]; then
  # export once (cached in /cache), build FP16 plans for this GPU with our plugins, and have
  # tritonserver load the plugin library (its TensorRT backend finds the creators registered)
  plugin=$WENET_TRITON_PREBUILT/libwenet_trt_plugins.so
  dir=$(python3 -c 'import sys; from wenet_triton.engines.artifacts import ensure_export; print(ensure_export(sys.argv[1]))' "$MODEL_DIR")
  [ -f "$dir/encoder.plan" ] || python3 -m wenet_triton.trt.build \
    --export-dir "$dir" --fp16 --plugins "$plugin" --plugin-nodes  # per GPU: clear /cache after a GPU change
  export LD_PRELOAD="$plugin${LD_PRELOAD:+:$LD_PRELOAD}"
  set -- --engine-dir "$dir" "$@"
fi
# MPS=1: a CUDA MPS daemon of the server's own (the instances' kernels share the GPU side by side);
# MPS=0: none; unset or empty: the serving config's `mps` (auto in configs/serving_gpu.yaml)
if [ "${MPS:-}" = 1 ]; then set -- --mps "$@"; elif [ "${MPS:-}" = 0 ]; then set -- --no-mps "$@"; fi
# GPUS (e.g. all, or 0,1): one server over several of the container's GPUs (docs/multigpu.md)
exec wenet-triton serve --model "$MODEL_DIR" --engine "$ENGINE" --config "$SERVING_CONFIG" \
  ${GPUS:+--gpus "$GPUS"} --host 0.0.0.0 --grpc-port 8001 --metrics-port 8002 --health-port 8003 "$@"
