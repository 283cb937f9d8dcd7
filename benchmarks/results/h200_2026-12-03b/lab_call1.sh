# session 19, call 1 (fresh machine): install; GPU tests of the fused FFN (triton_ffn) and the
# SiLU GEMM (044cebf's shared helpers, not yet run on a GPU); the FFN kernel A/B with the plan
# sweep; carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py -k "silu or ffn" 2>&1 | tee $OUT/gpu_tests.log | tail -15
timeout 240 python3 -m benchmarks.ffn_fused_ab --sweep --out $OUT/ffn_fused.csv 2>&1 | grep -v "^encoder_silu *plan\|^decoder_relu *plan" | tail -30
