# session 19, call 2 (fresh machine): the fused FFN used below 1,024 rows only, d 512 with
# half-size weight tiles, the vocabulary rule up to two programs per SM; GPU tests; the kernels'
# A/B (rule only); the encoder + decoder torch_cuda vs torch_cuda_fused (SiLU GEMM from 1,024
# rows, fused FFN below, fused vocabulary projection), two alternating rounds; carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py -k "silu or ffn or vocab" 2>&1 | tee $OUT/gpu_tests.log | tail -4
timeout 100 python3 -m benchmarks.ffn_fused_ab --out $OUT/ffn_fused.csv 2>&1 | tail -20
for i in 1 2; do for e in torch_cuda torch_cuda_fused; do
  timeout 70 python3 -m wenet_triton.cli bench --out /tmp/b/$e$i --models aishell --engines $e --batches 1,8,64 --seconds 10,20 > /tmp/$e$i.log 2>&1
  cut -d, -f2-5,7,9 /tmp/b/$e$i/bench.csv | tail -n +2; mkdir -p $OUT/bench; cp /tmp/b/$e$i/bench.csv $OUT/bench/$e$i.csv
done; done
