# session 23, call B (call A's warm machine, within 30 s; carry .device_s23s: the tritonserver
# bundle of docs/lab/pack_serve_assets.sh; the wavs are the 3 synth_test ones in wenet_triton/samples): the GPU default
# (configs/serving_gpu.yaml) served at 10 s and 20 s, c256 (no number since 2026-12-02), with a
# longer perf_analyzer window and 50 % stability; then 5 s at c448 through the front and straight
# to tritonserver's own port (what the front costs, same run); transcripts against the CPU pipeline.
# Progress goes to $OUT/progress.txt and the results are packed after every step.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s23_installed ] || { echo "fresh machine: call A's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s); R=/tmp/resB; W=/tmp/wenet_triton_gpu; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/served.tgz -C $R . ; }
export WAV_DIR=wenet_triton/samples PA_BATCHES=" " SERVING_CONFIG=configs/serving_gpu.yaml
OUT=$R/gpu timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
grep -h "python backend shared memory" $W/triton.log | head -1 >> $OUT/progress.txt
ls -l /dev/shm > $R/gpu/shm_at_start.txt; el ready
OUT=$R/gpu PA_SECONDS="10 20" PA_CONC=256:256:1 PA_INTERVAL=6000 PA_TRIALS=8 PA_STABILITY=50 \
  timeout 300 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer |front|tritonserver " | tee -a $OUT/progress.txt
ls -l /dev/shm > $R/gpu/shm_after.txt; el lengths
OUT=$R/gpu5 PA_SECONDS=5 PA_CONC=448:448:1 timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer |front|tritonserver " | tee -a $OUT/progress.txt
el front5
P=$(grep -oE "(GRPCInferenceService at|Triton ready: gRPC) [0-9.]*:[0-9]+" $W/triton.log | head -1 | grep -oE "[0-9]+$")
echo "tritonserver port $P" | tee -a $OUT/progress.txt
OUT=$R/direct5 PA_URL=127.0.0.1:$P PA_SECONDS=5 PA_CONC=448:448:1 timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer |front|tritonserver " | tee -a $OUT/progress.txt
el direct5
OUT=$R/gpu timeout 60 scripts/gpu/serve.sh accuracy 2>&1 | tail -2 | tee -a $OUT/progress.txt
grep -ciE "SIGSEGV|Signal \(11\)|lock_exception" $W/triton.log; curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
pkill -f perf_analyzer; OUT=$R/gpu timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1
el done
