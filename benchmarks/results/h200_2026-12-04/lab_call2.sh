# session 22, call 2 (call 1's warm machine; carry .device_s22s: the tritonserver bundle of
# docs/lab/pack_serve_assets.sh + 4 synth_test wavs with their text): the served table from one
# run, with the python backend's regions sized at start (serving/pyshm.py). The GPU default
# (configs/serving_gpu.yaml) at 5 s c384-c512, transcripts against the CPU pipeline, then the
# sequence that crashed tritonserver 2.51 in session 21 (2 s, then 10 s, then 20 s at c256),
# the regions' sizes before and after it; then the five-model ensemble
# (configs/serving_gpu_ensemble.yaml) at 5 s c128 / c256. Default decoding (LM, beam 20),
# perf_analyzer through serve's checking front, on the same 16 cores.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s22_installed ] || { echo "fresh machine: call 1's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s22s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s)
R=/tmp/res2; mkdir -p $R
export WAV_DIR=.device_s22s/wavs PA_BATCHES=" "
df -h /dev/shm | tail -1
OUT=$R/gpu SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
echo "gpu default ready after $(( $(date +%s) - t0 )) s"
grep -h "python backend shared memory" /tmp/wenet_triton_gpu/triton.log | head -1
ls -l /dev/shm > $R/gpu/shm_at_start.txt; awk '/triton_python/ {print $5}' $R/gpu/shm_at_start.txt | sort | uniq -c
OUT=$R/gpu PA_SECONDS=5 PA_CONC=384:512:64 timeout 150 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
OUT=$R/gpu timeout 60 scripts/gpu/serve.sh accuracy 2>&1 | tail -2
echo "gpu 5 s $(( $(date +%s) - t0 )) s"
OUT=$R/gpu_len PA_SECONDS="2 10 20" PA_CONC=256:256:1 timeout 170 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer "
ls -l /dev/shm > $R/gpu_len/shm_after.txt; awk '/triton_python/ {print $5}' $R/gpu_len/shm_after.txt | sort | uniq -c
grep -ciE "SIGSEGV|Signal \(11\)|lock_exception" /tmp/wenet_triton_gpu/triton.log; curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print(\"restarts\", d[\"restarts\"], d[\"state\"])"
OUT=$R/gpu scripts/gpu/serve.sh stop > /dev/null 2>&1
echo "gpu lengths $(( $(date +%s) - t0 )) s"
OUT=$R/ens SERVING_CONFIG=configs/serving_gpu_ensemble.yaml timeout 120 scripts/gpu/serve.sh start 2>&1 | tail -1
grep -h "python backend shared memory" /tmp/wenet_triton_gpu/triton.log | tail -1
OUT=$R/ens PA_SECONDS=5 PA_CONC=128:256:128 timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
OUT=$R/ens scripts/gpu/serve.sh stop > /dev/null 2>&1
echo "ensemble $(( $(date +%s) - t0 )) s"
tar czf $OUT/served.tgz -C $R .
