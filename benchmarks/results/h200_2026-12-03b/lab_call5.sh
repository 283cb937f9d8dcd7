# session 19, call 5 (fresh machine): with the Triton-lang kernels on by default in torch_cuda
# (SiLU GEMM, fused FFN below 1,024 rows, fused vocabulary projection), the GPU test files
# (../shared not carried: its reference tests skip); carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
timeout 300 python3 -m pytest -q -p no:cacheprovider -x tests/test_gpu.py tests/test_triton_gemm.py \
  tests/test_gpu_search.py tests/test_streaming.py tests/test_fast_model.py 2>&1 | tee $OUT/gpu_tests.log | tail -8
