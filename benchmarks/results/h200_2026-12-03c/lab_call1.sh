# session 20, call 1 (fresh machine): GPU tests of what session 19 wrote after its calls (load-time
# tuning, the opt-in conv and CTC-head kernels, the shared vocab/CTC logits step) and of this
# session's shared row-tile prologue; the conv A/B with its plan sweep; the CTC-head A/B. FP8 FFN kernel + engine.
# carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
echo "install+build $(( $(date +%s) - t0 )) s"
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py \
  -k "conv or ctc or warm or ffn or vocab or silu or fp8" 2>&1 | tee $OUT/gpu_tests.log | tail -6
echo "tests $(( $(date +%s) - t0 )) s"
timeout 120 python3 -m benchmarks.conv_subsample_ab --sweep --out $OUT/conv.csv 2>&1 | tail -14
echo "conv $(( $(date +%s) - t0 )) s"
timeout 100 python3 -m benchmarks.ffn_fused_ab --rows 256,4096,32768 --dec-rows 410 --out $OUT/kernels.csv 2>&1 | tail -12
echo "done $(( $(date +%s) - t0 )) s"
