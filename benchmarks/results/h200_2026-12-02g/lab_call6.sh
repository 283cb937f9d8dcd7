# session 17, call 6 (fresh machine): the split-K kernels' fallback for rows the vector kernel cannot take
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s17w/*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
timeout 150 python3 -m pytest -q tests/test_gpu.py tests/test_fast_model.py -k "layernorm or parts or splitk or fp32_equals" -p no:cacheprovider > $OUT/gpu_tests_call6.log 2>&1
grep -E "passed|failed|Error" $OUT/gpu_tests_call6.log | tail -5
