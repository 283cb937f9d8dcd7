# session 17, call 2 (fresh machine): install (serving wheels too: call 3 follows on this machine),
# HEAD's GPU tests, then ours vs WeNet v2.2.1's own eager code in one run (model table)
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s17w/*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
R=$OUT/r; mkdir -p $R
git log --oneline -1 > $R/gpu.txt 2>/dev/null; nproc >> $R/gpu.txt; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv >> $R/gpu.txt
timeout 220 python3 -m pytest -q tests/test_gpu.py tests/test_gpu_search.py tests/test_streaming.py -k "not two_gpus" -p no:cacheprovider > $R/gpu_tests_full.log 2>&1
grep -E "passed|failed|error" $R/gpu_tests_full.log | tail -3
timeout 70 python3 -m wenet_triton.cli bench --out $R/bench --models aishell --engines torch_cuda --batches 1,8,64 --seconds 5,10,20 > $R/bench.log 2>&1
cut -d, -f2-9 $R/bench/bench.csv
WENET_SRC=.device_s17/wenet timeout 110 python3 .device_s17/peer_wenet_gpu.py > $R/peer.jsonl 2> $R/peer.err
head -20 $R/peer.jsonl
cd $OUT && tar czf r.tgz r && rm -rf r
