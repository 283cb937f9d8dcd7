# session 21, call 1 (fresh machine; carry .device_serve_whl .device_peer): install, the GPU
# tests (GPU search exactness included), then the model-level table from one run: torch_cuda
# (AISHELL shape, two rounds) and WeNet v2.2.1's own eager code (.device_peer = wenet/ from
# `git archive v2.2.1 wenet/transformer wenet/utils` + ../shared/bench/peer_wenet_gpu.py), the
# FFN kernel's tile at one utterance (BM 32 against the rule's 64), profiles of the default
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('numpy', numpy.__version__)" && touch /tmp/s21_installed
echo "install $(( $(date +%s) - t0 )) s"
timeout 170 python3 -m pytest tests/test_gpu.py tests/test_gpu_search.py tests/test_fast_model.py -k "not two_gpus" -q -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
tail -1 $OUT/gpu_tests.log; echo "tests $(( $(date +%s) - t0 )) s"
run() {  # run NAME VAR=VALUE (A=1: none), bench args in $BARGS: one merged CSV ($OUT returns 8 files at most)
  local name=$1; shift
  env "$@" timeout 90 python3 -m wenet_triton.cli bench --out /tmp/b/$name --models aishell --engines torch_cuda $BARGS > /tmp/$name.log 2>&1 || tail -3 /tmp/$name.log
  [ -f $OUT/bench.csv ] || sed -n 1p /tmp/b/$name/bench.csv | sed 's/^/variant,/' > $OUT/bench.csv
  tail -n +2 /tmp/b/$name/bench.csv | sed "s/^/$name,/" >> $OUT/bench.csv
  echo "$name"; cut -d, -f3-5,7,9 /tmp/b/$name/bench.csv | tail -n +2
}
BARGS="--batches 1,8,64 --seconds 5,10,20" run default1 A=1
BARGS="--batches 1 --seconds 10,20" run ffn_bm32_s16 WENET_TRITON_FFN_PLAN=32,64,4,2,16
BARGS="--batches 1 --seconds 10,20" run ffn_bm32_s32 WENET_TRITON_FFN_PLAN=32,64,4,2,32
BARGS="--batches 1,64 --seconds 10,20" run default2 A=1
echo "bench $(( $(date +%s) - t0 )) s"
WENET_SRC=.device_peer timeout 120 python3 .device_peer/peer_wenet_gpu.py > $OUT/peer.jsonl 2> /tmp/peer.err || tail -3 /tmp/peer.err
grep '"batch": 64, "seconds": 20\|"batch": 1, "seconds": 10' $OUT/peer.jsonl
echo "peer $(( $(date +%s) - t0 )) s"
PYTHONPATH=. timeout 50 python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 > $OUT/profile_64x20.txt 2>&1
PYTHONPATH=. timeout 40 python3 benchmarks/profile_gpu.py --batch 1 --seconds 10 > $OUT/profile_1x10.txt 2>&1
grep -A12 "encoder kernels" $OUT/profile_64x20.txt | cut -c1-60,150-175
echo "done $(( $(date +%s) - t0 )) s"
