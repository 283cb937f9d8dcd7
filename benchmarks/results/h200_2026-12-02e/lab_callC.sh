# last call (after install.sh): streams confirmation on a third machine, then fused PA unary vs --streaming
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
tar xJf .device_serve/tritonserver_bundle.txz -C /tmp && export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res3; mkdir -p $R
export WAV_DIR=.device_serve/wavs STREAM_DURATION=16 STREAM_PROCS=6
SERVING_CONFIG=configs/serving_gpu_streams.yaml OUT=$R/s scripts/gpu/serve.sh start 2>&1 | tail -1
OUT=$R/s STREAMS=2048,3072,3584 STREAM_CHUNK_MS=640 STREAM_TIMEOUT=160 scripts/gpu/serve.sh streams 2>&1 | grep "^streams\|stopping"
OUT=$R/s scripts/gpu/serve.sh stop > /dev/null 2>&1
export SERVING_CONFIG=configs/serving_gpu.yaml PA_SECONDS=5 PA_CONC=384:384 PA_BATCHES=" "
OUT=$R/f scripts/gpu/serve.sh start 2>&1 | tail -1
OUT=$R/u scripts/gpu/serve.sh pa 2>&1 | grep -E "Throughput|p99"
OUT=$R/st PA_EXTRA=--streaming scripts/gpu/serve.sh pa 2>&1 | grep -E "Throughput|p99|error"
OUT=$R/f scripts/gpu/serve.sh stop > /dev/null 2>&1
grep -E "did not beat|stub died|Signal" $R/f/triton.log $R/s/triton.log
lscpu | grep -E "Model name" > $R/lscpu.txt
tar czf $OUT/final.tgz -C $R . ; ls -la $OUT
