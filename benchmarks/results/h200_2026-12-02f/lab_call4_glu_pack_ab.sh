# session 16, call 4: glu_dwconv pair kernel with 8 rows' loads in flight: tests, A/B vs old, profiles
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
mkdir -p /tmp/old && tar xzf .device_s16/old.tgz -C /tmp/old
(cd /tmp/old && PYTHONPATH=/tmp/old python3 -c "from wenet_triton.engines import kernels; kernels.build('/tmp/old/libwenet_kernels.so')" 2>&1 | tail -1)
R=$OUT/r; mkdir -p $R
timeout 200 python3 -m pytest -q tests/test_gpu.py -k "glu or pack or engine or chunk" 2>&1 | tail -4 > $R/gpu_tests.log
tail -2 $R/gpu_tests.log
for i in 1 2 3; do
  (cd /tmp/old && PYTHONPATH=/tmp/old WENET_KERNELS_LIB=/tmp/old/libwenet_kernels.so python3 -m wenet_triton.cli bench --out $R/old$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > $R/old$i.log 2>&1)
  python3 -m wenet_triton.cli bench --out $R/new$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > $R/new$i.log 2>&1
done
for f in $R/old1 $R/new1 $R/old2 $R/new2 $R/old3 $R/new3; do echo "== $f"; cut -d, -f2-7 $f/bench.csv; done
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 --top 40 > $R/prof_new_64x20.txt 2>&1
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 1 --seconds 10 --top 40 > $R/prof_new_1x10.txt 2>&1
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 8 --seconds 10 --top 40 > $R/prof_new_8x10.txt 2>&1
(cd /tmp/old && PYTHONPATH=/tmp/old WENET_KERNELS_LIB=/tmp/old/libwenet_kernels.so python3 benchmarks/profile_gpu.py --batch 8 --seconds 10 --top 40 > $R/prof_old_8x10.txt 2>&1)
grep -E "glu_dwconv.*<|pack_rel_keys_kernel|CatArray" $R/prof_*.txt | cut -c1-110,200-240
cd $OUT && tar czf r.tgz r && rm -rf r
