# session 17, call 5 (after call 4, same machine): served default with 4 (auto) vs 6 checking front
# workers at c448 / c512 (cores per process group each), then streams at 640 ms; carry .device_s17s .device_s17
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -c "import numpy, tritonclient; print(numpy.__version__)" || exit 3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
[ -d /tmp/tritonserver ] || tar xJf .device_s17s/tritonserver_bundle.txz -C /tmp
export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res5; mkdir -p $R; W=/tmp/wenet_triton_gpu
lscpu | grep -E "Model name|^CPU\(s\)|MHz" > $R/lscpu.txt
export WAV_DIR=.device_s17s/wavs PA_SECONDS=5 PA_BATCHES=" "
for g in 4 6; do
  OUT=$R/g$g SERVE_ARGS="--guard-workers $g" SERVING_CONFIG=configs/serving_gpu.yaml timeout 120 scripts/gpu/serve.sh start 2>&1 | tail -1
  OUT=$R/g$g PA_CONC=448:512:64 timeout 150 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer|stubs|tritonserver |host"
  OUT=$R/g$g scripts/gpu/serve.sh stop > /dev/null 2>&1
done
OUT=$R/s SERVING_CONFIG=configs/serving_gpu_streams.yaml timeout 120 scripts/gpu/serve.sh start 2>&1 | tail -1
OUT=$R/s STREAM_TRANSPORT=stream STREAMS=3072,3584 STREAM_CHUNK_MS=640 STREAM_DURATION=16 STREAM_PROCS=6 STREAM_TIMEOUT=170 scripts/gpu/serve.sh streams 2>&1 | grep -v "^$" | tail -8
OUT=$R/s scripts/gpu/serve.sh stop > /dev/null 2>&1
tar czf $OUT/served5.tgz -C $R . ; ls -la $OUT
