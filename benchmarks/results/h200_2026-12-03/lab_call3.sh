# (tree at commit 5d76341: WENET_TRITON_GUARD_STREAMS exists only there)
# session 18, call 3 (same machine as calls 1-2): backend streams 4 / 0 / 4 / 0 alternating, a
# server start each, perf_analyzer sync at c512 only; carry .device_s18s
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res3; mkdir -p $R
export WAV_DIR=.device_s18s/wavs PA_SECONDS=5 PA_BATCHES=" " PA_CONC=512:512:1
k=0
for n in 4 0 4 0; do
  k=$((k + 1)); export WENET_TRITON_GUARD_STREAMS=$n
  OUT=$R/r${k}_s$n SERVING_CONFIG=configs/serving_gpu.yaml timeout 120 scripts/gpu/serve.sh start 2>&1 | tail -1
  echo "round $k streams $n"
  OUT=$R/r${k}_s$n timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver |host"
  OUT=$R/r${k}_s$n scripts/gpu/serve.sh stop > /dev/null 2>&1
done
tar czf $OUT/served3.tgz -C $R .
