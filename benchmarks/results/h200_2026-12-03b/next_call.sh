# NOT EXECUTED (written in session 19 after its device time ran out): one call on a fresh machine
# for the next session. GPU tests of the commits after c7c2c8f (the load-time tuning, the
# opt-in conv and CTC-head kernels), their kernel A/Bs, and the engine with each opt-in kernel
# against the default, alternating; carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gemm.py tests/test_gpu.py \
  -k "conv or ctc or warm or ffn or vocab" 2>&1 | tee $OUT/gpu_tests.log | tail -4
timeout 120 python3 -m benchmarks.conv_subsample_ab --sweep --out $OUT/conv.csv 2>&1 | tail -12
timeout 60 python3 -m benchmarks.ffn_fused_ab --rows 256,32768 --dec-rows 410 --out $OUT/kernels.csv 2>&1 | grep ctc_head
for i in 1 2; do for e in torch_cuda torch_cuda_conv torch_cuda_ctc; do
  timeout 60 python3 -m wenet_triton.cli bench --out /tmp/b/$e$i --models aishell --engines $e --batches 1,64 --seconds 10,20 > /tmp/$e$i.log 2>&1
  cut -d, -f2-5,7,9 /tmp/b/$e$i/bench.csv | tail -n +2; mkdir -p $OUT/bench; cp /tmp/b/$e$i/bench.csv $OUT/bench/$e$i.csv
done; done
# where the time goes now (default engine), 64 x 20 s and 1 x 10 s
PYTHONPATH=. timeout 60 python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 > $OUT/profile_64x20.txt 2>&1
PYTHONPATH=. timeout 60 python3 benchmarks/profile_gpu.py --batch 1 --seconds 10 > $OUT/profile_1x10.txt 2>&1
