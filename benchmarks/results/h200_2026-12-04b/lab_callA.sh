# session 23, call A (fresh machine; carry .device_serve_whl .device_peer): install (also for
# call B on the same warm machine), the GPU test of the fused CTC head (split form included), the
# split-vocabulary CTC head (WENET_TRITON_CTC_SPLIT=1) against the default in alternating rounds,
# the 64-row shapes and WeNet v2.2.1's own eager code in the same call.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
el() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a $OUT/progress.txt; }
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('numpy', numpy.__version__)" && touch /tmp/s23_installed
el install
timeout 150 python3 -m pytest tests/test_gpu.py -k ctc_head -q -p no:cacheprovider > $OUT/ctc_test.log 2>&1
tail -1 $OUT/ctc_test.log | tee -a $OUT/progress.txt; el ctc_test
run() {  # run NAME VAR=VALUE (A=1: none), bench args in $BARGS: one merged CSV
  local name=$1; shift
  env "$@" timeout 100 python3 -m wenet_triton.cli bench --out /tmp/b/$name --models aishell --engines torch_cuda $BARGS > /tmp/$name.log 2>&1 || tail -3 /tmp/$name.log
  [ -f $OUT/bench.csv ] || sed -n 1p /tmp/b/$name/bench.csv | sed 's/^/variant,/' > $OUT/bench.csv
  tail -n +2 /tmp/b/$name/bench.csv | sed "s/^/$name,/" >> $OUT/bench.csv
  echo "$name"; cut -d, -f3-5,7,9 /tmp/b/$name/bench.csv | tail -n +2
}
for r in 1 2; do
  BARGS="--batches 1,8 --seconds 5,10,20" run default_$r A=1
  BARGS="--batches 1,8 --seconds 5,10,20" run split_$r WENET_TRITON_CTC_SPLIT=1
done
BARGS="--batches 1 --seconds 10,20" run split_bm32 WENET_TRITON_CTC_SPLIT=1 WENET_TRITON_CTC_PLAN=32,128,4,2
el rounds
BARGS="--batches 64 --seconds 10,20" run default_64 A=1
el batch64
WENET_SRC=.device_peer timeout 150 python3 .device_peer/peer_wenet_gpu.py > $OUT/peer.jsonl 2> /tmp/peer.err || tail -3 /tmp/peer.err
grep '"batch": 64, "seconds": 20\|"batch": 1, "seconds": 10' $OUT/peer.jsonl
el peer
BARGS="--batches 1 --seconds 10,20" run default_3 A=1
BARGS="--batches 1 --seconds 10,20" run split_3 WENET_TRITON_CTC_SPLIT=1
el done
