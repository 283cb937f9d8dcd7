# (tree at commit 5d76341: WENET_TRITON_GUARD_STREAMS exists only there)
# session 18, call 2 (after call 1, same machine): the fused GPU default (configs/serving_gpu.yaml),
# the checking front forwarding each request as a unary call to tritonserver (streams 0, as
# before) or as a message on 4 ModelStreamInfer streams per front worker (streams 4), each with
# perf_analyzer in its default sync mode and in --async mode; carry .device_s18s
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -c "import numpy, tritonclient; print(numpy.__version__)" || exit 3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
[ -d /tmp/tritonserver ] || tar xJf .device_s18s/tritonserver_bundle.txz -C /tmp
export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res2; mkdir -p $R
export WAV_DIR=.device_s18s/wavs PA_SECONDS=5 PA_BATCHES=" " PA_CONC=${PA_CONC:-448:512:64}
for n in 0 4; do
  export WENET_TRITON_GUARD_STREAMS=$n
  OUT=$R/s$n SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
  for mode in sync async; do
    extra=""; [ $mode = async ] && extra="--async --max-threads 64"
    OUT=$R/s${n}_$mode PA_EXTRA="$extra" timeout 140 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer|stubs|tritonserver |host"
  done
  curl -s 127.0.0.1:8003/metrics | grep -E "^wenet_triton_guard_(served|streamed|replayed)" | tee $R/s$n/guard_metrics.txt
  [ $n = 4 ] && OUT=$R/s$n timeout 120 scripts/gpu/serve.sh accuracy 2>&1 | tail -3
  OUT=$R/s$n scripts/gpu/serve.sh stop > /dev/null 2>&1
done
tar czf $OUT/served2.tgz -C $R . ; ls -la $OUT
