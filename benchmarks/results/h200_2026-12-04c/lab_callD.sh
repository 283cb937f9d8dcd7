# session 24, call D (after lab_callA.sh = the install on the same warm machine, within 30 s; carry
# .device_s23s = the tritonserver bundle, .device_peer = WeNet v2.2.1 + peer_wenet_gpu.py):
# GPU tests of the warm-up at load, the model-level table (ours vs WeNet's eager code), then the
# GPU default served with encoder graphs captured at load (cbf200f): first requests after the
# start, 20 s c256, 5 s c512 through the front / direct / as gRPC streams, transcripts; last, the
# first requests again on a server started with warm_graphs_seconds 0 (captures on first use).
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s23_installed ] || { echo "fresh machine: lab_callA.sh's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s); R=/tmp/resD; W=/tmp/wenet_triton_gpu; H=benchmarks/results/h200_2026-12-04c; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/d.tgz -C $R . ; }
timeout 120 python3 -m pytest tests/test_gpu.py -k "warm_encoder or warm_kernels" -q -p no:cacheprovider > $R/gpu_tests.log 2>&1
tail -1 $R/gpu_tests.log | tee -a $OUT/progress.txt; el tests
timeout 90 python3 -m wenet_triton.cli bench --out $R/bench --models aishell --engines torch_cuda \
  --batches 1,64 --seconds 10,20 > $R/bench.log 2>&1 || tail -3 $R/bench.log
cut -d, -f3-5,7,9 $R/bench/bench.csv | tee -a $OUT/progress.txt; el bench
WENET_SRC=.device_peer timeout 120 python3 .device_peer/peer_wenet_gpu.py > $R/peer.jsonl 2> $R/peer.err || tail -3 $R/peer.err
grep '"batch": 64, "seconds": 20\|"batch": 1, "seconds": 10' $R/peer.jsonl | tee -a $OUT/progress.txt; el peer
export WAV_DIR=wenet_triton/samples PA_BATCHES=" " SERVING_CONFIG=configs/serving_gpu.yaml PA_MEM_FLOOR_MB=16384
show() { grep -E "Concurrency:|perf_analyzer |front|tritonserver |stopped|time windows" | tee -a $OUT/progress.txt; }
ts=$(date +%s); OUT=$R/gpu timeout 200 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
echo "start took $(( $(date +%s) - ts )) s" | tee -a $OUT/progress.txt
grep -h "captured\|tuned" $R/gpu/server.log $W/triton.log | tee -a $OUT/progress.txt; el ready
timeout 60 python3 $H/first_requests.py --url 127.0.0.1:8001 --out $R/first_requests.csv --label warm_at_load 2>&1 | tee -a $OUT/progress.txt; el first_warm
OUT=$R/l20 PA_REQUESTS=6000 PA_SECONDS=20 PA_CONC=256:256:1 timeout 100 scripts/gpu/serve.sh pa 2>&1 | show; el l20
OUT=$R/c5 PA_REQUESTS=40000 PA_SECONDS=5 PA_CONC=512:512:1 timeout 80 scripts/gpu/serve.sh pa 2>&1 | show; el c512
OUT=$R/s5 PA_REQUESTS=40000 PA_EXTRA=--streaming PA_SECONDS=5 PA_CONC=512:512:1 timeout 80 scripts/gpu/serve.sh pa 2>&1 | show; el s512
P=$(grep -oE "Triton ready: gRPC [0-9.]*:[0-9]+" $W/triton.log | tail -1 | grep -oE "[0-9]+$")
OUT=$R/d5 PA_REQUESTS=40000 PA_URL=127.0.0.1:$P PA_SECONDS=5 PA_CONC=512:512:1 timeout 80 scripts/gpu/serve.sh pa 2>&1 | show; el d512
OUT=$R/gpu timeout 40 scripts/gpu/serve.sh accuracy 2>&1 | grep accuracy | tee -a $OUT/progress.txt
curl -s 127.0.0.1:8003/healthz | python3 -c "import json,sys; d=json.load(sys.stdin); print('restarts', d['restarts'], d['state'])" | tee -a $OUT/progress.txt
cp $W/triton.log $R/triton_warm.log; pkill -f perf_analyzer; OUT=$R/gpu timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1; el stopped
sed 's/warm_graphs_seconds: 20/warm_graphs_seconds: 0/' configs/serving_gpu.yaml > /tmp/serving_gpu_cold.yaml
ts=$(date +%s); OUT=$R/cold SERVING_CONFIG=/tmp/serving_gpu_cold.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
echo "start (no warm-up) took $(( $(date +%s) - ts )) s" | tee -a $OUT/progress.txt
timeout 60 python3 $H/first_requests.py --url 127.0.0.1:8001 --out $R/first_requests.csv --label capture_on_first_use 2>&1 | tee -a $OUT/progress.txt
cp $W/triton.log $R/triton_cold.log; OUT=$R/cold timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1
el done
