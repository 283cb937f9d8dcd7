# session 16, call 6: HEAD's GPU tests, then ours vs WeNet v2.2.1's own eager code in one run
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s16/whl/*.whl .device/whl/kaldi*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv > $R/gpu.txt
timeout 130 python3 -m pytest -q tests/test_gpu.py tests/test_gpu_search.py tests/test_streaming.py::test_batched_fbank_equals_whole_utterance_knf -k "not two_gpus" 2>&1 | tail -12 > $R/gpu_tests.log
tail -3 $R/gpu_tests.log
timeout 60 python3 -m wenet_triton.cli bench --out $R/bench --models aishell --engines torch_cuda --batches 1,8,64 --seconds 5,10,20 > $R/bench.log 2>&1
cut -d, -f2-9 $R/bench/bench.csv
WENET_SRC=.device_s16/wenet timeout 100 python3 .device_s16/peer_wenet_gpu.py > $R/peer.jsonl 2> $R/peer.err
cat $R/peer.jsonl | head -20
cd $OUT && tar czf r.tgz r && rm -rf r
