# session 20, call 5 (fresh machine): the add + LayerNorm vector kernels launched with the fewest
# vectors per lane that cover the row (MV 1 for d 256: 56 instead of 128 registers, ptxas) against
# the first form (-DWK_VEC_MV4), same machine, alternating: GPU tests, then the engine A/B at
# 64 x 20 s and 1 x 10 s. carry .device_k
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .device_k/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins --arch 90 2>&1 | tail -1 &
NVCC_FLAGS=-DWK_VEC_MV4 bash wenet_triton/csrc/build.sh kernels /tmp/mv4.so 90 &
wait
echo "built $(( $(date +%s) - t0 )) s"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "layernorm or parts or splitk" 2>&1 | tee $OUT/gpu_tests.log | tail -2
echo "tests $(( $(date +%s) - t0 )) s"
for i in 1 2; do for e in mv1 mv4; do
  lib=""; [ $e = mv4 ] && lib="WENET_KERNELS_LIB=/tmp/mv4.so"
  env $lib timeout 40 python3 -m wenet_triton.cli bench --out /tmp/b/$e$i --models aishell --engines torch_cuda --batches 1,64 --seconds 10,20 > /tmp/$e$i.log 2>&1 || tail -3 /tmp/$e$i.log
  echo "$e$i"; cut -d, -f3-5,7,9 /tmp/b/$e$i/bench.csv | tail -n +2
  [ -f $OUT/bench.csv ] || sed -n 1p /tmp/b/$e$i/bench.csv | sed 's/^/variant,round,/' > $OUT/bench.csv
  tail -n +2 /tmp/b/$e$i/bench.csv | sed "s/^/$e,$i,/" >> $OUT/bench.csv
done; done
echo "done $(( $(date +%s) - t0 )) s"
