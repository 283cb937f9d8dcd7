# session 22, call 3 (after lab_call2a.sh on a fresh machine; carry .device_s22s): call 2's
# 10 s point did not settle within perf_analyzer's 10 trials and its 20 s point was cut by the
# step's timeout (the server was stopped under it). 10 s and 20 s again at c256 on the GPU default,
# looser stability (50 %), the regions' sizes before and after.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s22_installed ] || { echo "fresh machine: call 2a's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s22s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s)
R=/tmp/res3; mkdir -p $R
export WAV_DIR=.device_s22s/wavs PA_BATCHES=" "
OUT=$R/gpu SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
echo "ready after $(( $(date +%s) - t0 )) s"
ls -l /dev/shm > $R/gpu/shm_at_start.txt
OUT=$R/gpu PA_SECONDS="10 20" PA_CONC=256:256:1 PA_EXTRA="--stability-percentage 50 --max-trials 6" \
  timeout --foreground 200 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer "
ls -l /dev/shm > $R/gpu/shm_after.txt; diff <(awk '/triton_python/{print $5,$9}' $R/gpu/shm_at_start.txt) <(awk '/triton_python/{print $5,$9}' $R/gpu/shm_after.txt) && echo "regions unchanged"
grep -ciE "SIGSEGV|Signal \(11\)|lock_exception" /tmp/wenet_triton_gpu/triton.log; curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])"
pkill -f perf_analyzer; OUT=$R/gpu scripts/gpu/serve.sh stop > /dev/null 2>&1
echo "done $(( $(date +%s) - t0 )) s"
tar czf $OUT/served3.tgz -C $R .
