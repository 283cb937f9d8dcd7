# session 19, call 1 (fresh machine): install; GPU tests of the fused FFN (triton_ffn), the fused
# decoder projection + log-softmax (triton_vocab) and the SiLU GEMM (044cebf's shared helpers,
# not yet run on a GPU); the kernels' A/B with the plan sweep; the encoder + decoder
# torch_cuda vs torch_cuda_fused; carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py -k "silu or ffn or vocab" 2>&1 | tee $OUT/gpu_tests.log | tail -15
timeout 150 python3 -m benchmarks.ffn_fused_ab --sweep --out $OUT/ffn_fused.csv 2>&1 | grep -v " plan " | tail -30
for e in torch_cuda torch_cuda_fused; do
  timeout 70 python3 -m wenet_triton.cli bench --out /tmp/b/$e --models aishell --engines $e --batches 1,8,64 --seconds 10,20 > /tmp/$e.log 2>&1
  cut -d, -f2-5,7,9 /tmp/b/$e/bench.csv; tail -2 /tmp/$e.log
done
mkdir -p $OUT/bench; for e in torch_cuda torch_cuda_fused; do cp /tmp/b/$e/bench.csv $OUT/bench/$e.csv; done
