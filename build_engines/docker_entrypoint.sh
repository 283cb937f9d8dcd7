#!/usr/bin/env bash
# Container start: render the Triton repository for $MODEL_DIR with $ENGINE (exports and
# CUDA-graph buckets are built on the host's GPU at first use; exports are cached in the
# /cache volume), then serve on 8000/8001/8002 until stopped.
set -euo pipefail
if [ ! -f "$MODEL_DIR/train.yaml" ]; then
  echo "no WeNet model at MODEL_DIR=$MODEL_DIR (mount a dir with train.yaml, final.pt, units.txt, global_cmvn)" >&2
  exit 2
fi
exec wenet-triton serve --model "$MODEL_DIR" --engine "$ENGINE" --config "$SERVING_CONFIG" \
  --host 0.0.0.0 --http-port 8000 --grpc-port 8001 --metrics-port 8002 "$@"
