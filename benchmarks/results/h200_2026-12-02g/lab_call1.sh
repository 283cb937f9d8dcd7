# session 17, call 1: install (serving wheels too, for call 2 on the same machine), kernel +
# engine tests of split-K, small-batch pieces, engine A/B of split-K policies (one tree, env knob)
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s17w/*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
R=$OUT/r; mkdir -p $R
nproc > $R/gpu.txt; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv >> $R/gpu.txt
timeout 200 python3 -m pytest -q tests/test_gpu.py -k "layernorm or parts or splitk or fp32_equals or glu or pack or attention" 2>&1 | tail -40 > $R/gpu_tests.log
tail -4 $R/gpu_tests.log
timeout 90 python3 -m benchmarks.small_batch_ab --out $R/small_batch.csv > $R/small_batch.txt 2>&1
cat $R/small_batch.txt
for r in 1 2; do
  for pol in 0 512:4,2048:2 512:8,2048:4,4096:2; do
    tag=$(echo $pol | tr ':,' '-_')
    WENET_TRITON_SPLITK=$pol timeout 60 python3 -m wenet_triton.cli bench --out $R/b_${tag}_$r --models aishell --engines torch_cuda --batches 1,4,8 --seconds 10 > /dev/null 2>&1
    echo "== $pol round $r"; cut -d, -f2-9 $R/b_${tag}_$r/bench.csv | tail -3
  done
done
cd $OUT && tar czf r.tgz r && rm -rf r
