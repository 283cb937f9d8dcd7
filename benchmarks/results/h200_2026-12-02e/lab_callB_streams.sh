# streams call 2 (after install.sh on the same warm machine): carry .device_serve .device_s15
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_PROFILE=10
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
tar xJf .device_serve/tritonserver_bundle.txz -C /tmp && export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res; mkdir -p $R
lscpu | grep -E "Model name|^CPU\(s\)|MHz" > $R/lscpu.txt
export WAV_DIR=.device_serve/wavs SERVING_CONFIG=configs/serving_gpu_streams.yaml STREAM_DURATION=16 STREAM_PROCS=6
W=/tmp/wenet_triton_gpu
OUT=$R/s scripts/gpu/serve.sh start 2>&1 | tail -3
# A: default transport (gRPC streams) through the guard; 3072 twice
(sleep 75; top -b -n 1 -w 200 | head -45 > $R/top_640.txt) &
OUT=$R/s STREAMS=2048,3072,3072,3584 STREAM_CHUNK_MS=640 STREAM_TIMEOUT=200 scripts/gpu/serve.sh streams 2>&1 | grep "^streams\|stopping"
OUT=$R/s STREAMS=1536,2048,2560 STREAM_CHUNK_MS=320 STREAM_TIMEOUT=150 scripts/gpu/serve.sh streams 2>&1 | grep "^streams\|stopping"
P=$(grep -oE "(GRPCInferenceService at|Triton ready: gRPC) [0-9.]*:[0-9]+" $W/triton.log | head -1 | grep -oE "[0-9]+$")
echo "tritonserver port $P"
OUT=$R/n GRPC_PORT=$P STREAMS=2560,3072 STREAM_CHUNK_MS=320 STREAM_TIMEOUT=100 scripts/gpu/serve.sh streams 2>&1 | grep "^streams\|stopping"
OUT=$R/s scripts/gpu/serve.sh stop
grep -hE "profile streaming|\[streaming\]" $W/triton.log | tail -40 > $R/profile_lines.txt
tar czf $OUT/streams2.tgz -C $R . ; ls -la $OUT
