# session 20, call 2 (call 1's warm machine: installs kept): the encoder + decoder with each
# opt-in kernel against the default, two alternating rounds; profiles of the default
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -c "import wenet_triton, kaldi_native_fbank" || { python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1; python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1; python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1; }
for i in 1 2; do for e in torch_cuda torch_cuda_conv torch_cuda_ctc torch_cuda_fp8; do
  timeout 60 python3 -m wenet_triton.cli bench --out /tmp/b/$e$i --models aishell --engines $e --batches 1,64 --seconds 10,20 > /tmp/$e$i.log 2>&1 || tail -5 /tmp/$e$i.log
  cut -d, -f2-5,7,9 /tmp/b/$e$i/bench.csv | tail -n +2; mkdir -p $OUT/bench; cp /tmp/b/$e$i/bench.csv $OUT/bench/$e$i.csv
done; done
PYTHONPATH=. timeout 60 python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 > $OUT/profile_64x20.txt 2>&1
PYTHONPATH=. timeout 60 python3 benchmarks/profile_gpu.py --batch 1 --seconds 10 > $OUT/profile_1x10.txt 2>&1
head -40 $OUT/profile_1x10.txt
