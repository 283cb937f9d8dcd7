# session 23, call E (after lab_callC.sh on a fresh machine; carry .device_s23s): call D found
# that perf_analyzer 2.60 itself grows by about request rate x request size (~100 GB in 40-66 s
# at 10 s, c256: the host's memory), which stalled call B's host and got a stub killed. Short
# windows (5 s, at most 5 trials, 50 %, -v: every window printed) keep each run within memory;
# proc_mem stops the load at 16 GB headroom. 10 s and 20 s at c256, 5 s at c448 through the front
# and straight to tritonserver's port.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s23_installed ] || { echo "fresh machine: call C's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s); R=/tmp/resE; W=/tmp/wenet_triton_gpu; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/served.tgz -C $R . ; }
export WAV_DIR=wenet_triton/samples PA_BATCHES=" " SERVING_CONFIG=configs/serving_gpu.yaml PA_MEM_FLOOR_MB=16384
export PA_INTERVAL=5000 PA_TRIALS=5 PA_STABILITY=50 PA_EXTRA="-v"
show() { grep -E "Concurrency:|perf_analyzer |front|tritonserver |stopped|perf_analyzer  " | tee -a $OUT/progress.txt; }
OUT=$R/gpu timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
el ready
OUT=$R/l10 PA_SECONDS=10 PA_CONC=256:256:1 timeout 75 scripts/gpu/serve.sh pa 2>&1 | show; el l10
OUT=$R/l20 PA_SECONDS=20 PA_CONC=256:256:1 timeout 75 scripts/gpu/serve.sh pa 2>&1 | show; el l20
OUT=$R/f5 PA_SECONDS=5 PA_CONC=448:448:1 timeout 70 scripts/gpu/serve.sh pa 2>&1 | show; el f5
P=$(grep -oE "Triton ready: gRPC [0-9.]*:[0-9]+" $W/triton.log | tail -1 | grep -oE "[0-9]+$")
OUT=$R/d5 PA_URL=127.0.0.1:$P PA_SECONDS=5 PA_CONC=448:448:1 timeout 70 scripts/gpu/serve.sh pa 2>&1 | show; el d5
curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
cp $W/triton.log $R/triton.log; pkill -f perf_analyzer; OUT=$R/gpu timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1
el done
