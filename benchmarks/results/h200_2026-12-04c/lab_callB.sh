# for the next session (written in session 23, not yet run): after lab_callC.sh on the same warm
# machine (within 30 s; carry .device_s23s = the bundle of docs/lab/pack_serve_assets.sh), the GPU
# default's served table from one call with serve.sh pa measuring each concurrency over a fixed
# --request-count that fits the host's memory (PA_REQUESTS=auto): 2 / 5 / 10 / 20 s at c256, 5 s at
# c384-c512 through the front, 5 s at c448 straight to tritonserver and as perf_analyzer
# --streaming (requests as messages on gRPC streams: the front relays those for ~35 % less CPU on
# the dev CPU, benchmarks/guard_front.py --transport), transcripts against the CPU pipeline.
# If the carry is over 64 MiB, move benchmarks/results out of the tree for the call (records only).
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s23_installed ] || { echo "fresh machine: lab_callC.sh's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s); R=/tmp/resN; W=/tmp/wenet_triton_gpu; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/served.tgz -C $R . ; }
export WAV_DIR=wenet_triton/samples PA_BATCHES=" " SERVING_CONFIG=configs/serving_gpu.yaml PA_MEM_FLOOR_MB=16384
show() { grep -E "Concurrency:|perf_analyzer |front|tritonserver |stopped|time windows" | tee -a $OUT/progress.txt; }
OUT=$R/gpu timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt; el ready
OUT=$R/len PA_SECONDS="2 5 10 20" PA_CONC=256:256:1 timeout 220 scripts/gpu/serve.sh pa 2>&1 | show; el lengths
OUT=$R/c5 PA_SECONDS=5 PA_CONC=384:512:64 timeout 120 scripts/gpu/serve.sh pa 2>&1 | show; el conc5
P=$(grep -oE "Triton ready: gRPC [0-9.]*:[0-9]+" $W/triton.log | tail -1 | grep -oE "[0-9]+$")
OUT=$R/d5 PA_URL=127.0.0.1:$P PA_SECONDS=5 PA_CONC=448:448:1 timeout 60 scripts/gpu/serve.sh pa 2>&1 | show; el direct5
OUT=$R/s5 PA_EXTRA=--streaming PA_SECONDS=5 PA_CONC=448:448:1 timeout 60 scripts/gpu/serve.sh pa 2>&1 | show; el stream5
OUT=$R/gpu timeout 40 scripts/gpu/serve.sh accuracy 2>&1 | tail -2 | tee -a $OUT/progress.txt
curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
cp $W/triton.log $R/triton.log; pkill -f perf_analyzer; OUT=$R/gpu timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1
el done
