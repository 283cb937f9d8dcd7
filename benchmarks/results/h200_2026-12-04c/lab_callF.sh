# session 24, call F (a fresh machine right after lab_callA.sh; carry .device_s23s): the first-requests
# probe with the warm-up at load of 6c8d2af (encoder graphs + one utterance through the pipeline)
# first, then a server that captures on first use; per-stage profile of the first batches.
[ -f /tmp/s23_installed ] || { echo "fresh machine: lab_callA.sh's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s23s/tritonserver_bundle.txz -C /tmp
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver WENET_TRITON_PROFILE=1
t0=$(date +%s); R=/tmp/resF; W=/tmp/wenet_triton_gpu; H=benchmarks/results/h200_2026-12-04c; mkdir -p $R
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; tar czf $OUT/f.tgz -C $R . ; }
export WAV_DIR=wenet_triton/samples
sed 's/warm_graphs_seconds: 20/warm_graphs_seconds: 0/' configs/serving_gpu.yaml > /tmp/serving_gpu_cold.yaml
for v in warm cold; do
  cfg=configs/serving_gpu.yaml; [ $v = cold ] && cfg=/tmp/serving_gpu_cold.yaml
  OUT=$R/$v SERVING_CONFIG=$cfg timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1 | tee -a $OUT/progress.txt
  timeout 60 python3 $H/first_requests.py --url 127.0.0.1:8001 --out $R/first_requests.csv --label $v 2>&1 | tee -a $OUT/progress.txt
  grep -h "at load" $W/triton.log | tail -2 | tee -a $OUT/progress.txt
  sleep 2; grep -h "profile fused" $W/triton.log | head -3 > $R/profile_$v.txt
  cp $W/triton.log $R/triton_$v.log; OUT=$R/$v timeout 30 scripts/gpu/serve.sh stop > /dev/null 2>&1; el $v
done
