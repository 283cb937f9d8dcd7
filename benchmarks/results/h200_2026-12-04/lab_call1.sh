# session 22, call 1 (fresh machine; carry .device_serve_whl .device_peer): install, the
# model-level table (torch_cuda AISHELL shape + WeNet v2.2.1's own eager code in the same call),
# two one-utterance variants (the fused CTC head below its 8,192-row threshold; the FFN's
# 32-row tiles), then the GPU tests in the time left (GPU search exactness included).
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('numpy', numpy.__version__)" && touch /tmp/s22_installed
echo "install $(el) s"
run() {  # run NAME VAR=VALUE (A=1: none), bench args in $BARGS: one merged CSV ($OUT returns 8 files at most)
  local name=$1; shift
  env "$@" timeout 100 python3 -m wenet_triton.cli bench --out /tmp/b/$name --models aishell --engines torch_cuda $BARGS > /tmp/$name.log 2>&1 || tail -3 /tmp/$name.log
  [ -f $OUT/bench.csv ] || sed -n 1p /tmp/b/$name/bench.csv | sed 's/^/variant,/' > $OUT/bench.csv
  tail -n +2 /tmp/b/$name/bench.csv | sed "s/^/$name,/" >> $OUT/bench.csv
  echo "$name"; cut -d, -f3-5,7,9 /tmp/b/$name/bench.csv | tail -n +2
}
BARGS="--batches 1,8,64 --seconds 5,10,20" run default A=1
echo "bench $(el) s"
WENET_SRC=.device_peer timeout 120 python3 .device_peer/peer_wenet_gpu.py > $OUT/peer.jsonl 2> /tmp/peer.err || tail -3 /tmp/peer.err
grep '"batch": 64, "seconds": 20\|"batch": 1, "seconds": 10' $OUT/peer.jsonl
echo "peer $(el) s"
BARGS="--batches 1 --seconds 10,20" run ctc_all_rows WENET_TRITON_CTC_MIN_ROWS=1
BARGS="--batches 1 --seconds 10,20" run ffn_bm32_ctc_all WENET_TRITON_FFN_PLAN=32,64,4,2,16 WENET_TRITON_CTC_MIN_ROWS=1
BARGS="--batches 1 --seconds 10,20" run default_again A=1
echo "variants $(el) s"
left=$(( 575 - $(el) ))
timeout $left python3 -m pytest tests/test_gpu.py tests/test_gpu_search.py tests/test_fast_model.py -k "not two_gpus" -q -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
tail -1 $OUT/gpu_tests.log; echo "tests (limit $left s) $(el) s"
