# streams call (after install.sh on the same warm machine): carry .device_serve
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_PROFILE=10
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
tar xJf .device_serve/tritonserver_bundle.txz -C /tmp && export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res; mkdir -p $R
lscpu | grep -E "Model name|^CPU\(s\)|MHz" > $R/lscpu.txt
export WAV_DIR=.device_serve/wavs SERVING_CONFIG=configs/serving_gpu_streams.yaml STREAM_DURATION=16 STREAM_PROCS=6
W=/tmp/wenet_triton_gpu
topsnap() { (sleep "${1:-25}"; top -b -n 1 -w 200 | head -40 > "$R/$2") & }
OUT=$R/s scripts/gpu/serve.sh start 2>&1 | tail -3
# A: gRPC streams through the guard, 3072 -> 4096 until behind
topsnap 25 top_stream.txt
OUT=$R/s STREAM_TRANSPORT=stream STREAMS=${A_STREAMS:-3072,3584,4096} STREAM_CHUNK_MS=640 STREAM_TIMEOUT=200 scripts/gpu/serve.sh streams 2>&1 | grep -v "^$" | tail -12
# B: unary through the guard, 3072
topsnap 25 top_unary.txt
OUT=$R/u STREAM_TRANSPORT=unary STREAMS=3072 STREAM_CHUNK_MS=640 STREAM_TIMEOUT=100 scripts/gpu/serve.sh streams 2>&1 | tail -8
# C: gRPC streams straight to tritonserver (no guard)
P=$(grep -oE "(GRPCInferenceService at|Triton ready: gRPC) [0-9.]*:[0-9]+" $W/triton.log | head -1 | grep -oE "[0-9]+$")
echo "tritonserver port $P"
topsnap 25 top_noguard.txt
OUT=$R/n GRPC_PORT=$P STREAM_TRANSPORT=stream STREAMS=3072,4096 STREAM_CHUNK_MS=640 STREAM_TIMEOUT=120 scripts/gpu/serve.sh streams 2>&1 | tail -8
# D: 320 ms chunks, gRPC streams through the guard
OUT=$R/s STREAM_TRANSPORT=stream STREAMS=2048,3072 STREAM_CHUNK_MS=320 STREAM_TIMEOUT=110 scripts/gpu/serve.sh streams 2>&1 | tail -8
OUT=$R/s scripts/gpu/serve.sh stop
grep -hE "profile|\[streaming\]" $W/triton.log | tail -60 > $R/profile_lines.txt
tar czf $OUT/streams_all.tgz -C $R . ; ls -la $OUT
