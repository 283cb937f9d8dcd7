# session 23, call D (call C's warm machine; carry .device_s23s): call B's host stalled for 131 s
# after ~85 s of 10 s requests at c256 (every process, the samplers too), then a python-backend
# stub was gone and tritonserver aborted (lock_exception): a memory leak driving the host into
# reclaim and the OOM killer? The same load with benchmarks/proc_mem.py beside proc_cpu (private
# memory per process group, /dev/shm, MemAvailable, cgroup; the load stopped at 16 GB headroom):
# through the front (20 s windows), then straight to tritonserver's port (15 s windows).
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s23_installed ] || { echo "fresh machine: call C's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s); R=/tmp/resD; W=/tmp/wenet_triton_gpu; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/served.tgz -C $R . ; }
export WAV_DIR=wenet_triton/samples PA_BATCHES=" " SERVING_CONFIG=configs/serving_gpu.yaml PA_MEM_FLOOR_MB=16384
free -m | tee -a $OUT/progress.txt; cat /sys/fs/cgroup/memory.max 2>/dev/null | tee -a $OUT/progress.txt
OUT=$R/gpu timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
el ready
OUT=$R/front PA_SECONDS=10 PA_CONC=256:256:1 PA_INTERVAL=20000 PA_TRIALS=6 PA_STABILITY=50 \
  timeout 140 scripts/gpu/serve.sh pa 2>&1 | grep -vE "^Thread \[" | tail -28 | tee -a $OUT/progress.txt
el front10
curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
P=$(grep -oE "Triton ready: gRPC [0-9.]*:[0-9]+" $W/triton.log | tail -1 | grep -oE "[0-9]+$")
OUT=$R/direct PA_URL=127.0.0.1:$P PA_SECONDS=10 PA_CONC=256:256:1 PA_INTERVAL=15000 PA_TRIALS=5 PA_STABILITY=50 \
  timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -vE "^Thread \[" | tail -28 | tee -a $OUT/progress.txt
el direct10
curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
cp $W/triton.log $R/triton.log; free -m | tee -a $OUT/progress.txt; (dmesg 2>&1 | grep -iE "oom|killed" | tail -5) | tee -a $OUT/progress.txt
pkill -f perf_analyzer; OUT=$R/gpu timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1
el done
