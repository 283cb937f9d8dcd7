# session 18, call 4 (fresh machine): the persistent TMA GEMM + bias + SiLU (triton_gemm.py):
# its GPU tests, the kernel A/B, the encoder with it (torch_cuda_silu) vs without, alternating;
# carry .device_serve_whl
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py -k "silu" 2>&1 | tee $OUT/gpu_tests.log | tail -4
timeout 120 python3 -m benchmarks.silu_gemm_ab --out $OUT/silu_gemm.csv
for i in 1 2; do
  timeout 90 python3 -m wenet_triton.cli bench --out /tmp/b/base$i --models aishell --engines torch_cuda --batches 1,64 --seconds 10,20 > /tmp/base$i.log 2>&1
  timeout 90 python3 -m wenet_triton.cli bench --out /tmp/b/silu$i --models aishell --engines torch_cuda_silu --batches 1,64 --seconds 10,20 > /tmp/silu$i.log 2>&1
done
for f in /tmp/b/*/bench.csv; do echo "== $f"; cut -d, -f1-9 $f; done 2>/dev/null | tee $OUT/bench_ab.txt | head -40
tail -3 /tmp/base1.log /tmp/silu1.log
cd /tmp/b && tar czf $OUT/bench_ab.tgz . 
