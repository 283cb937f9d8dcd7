# session 16, call 2: bench A/B (torch_cuda vs the Triton SiLU GEMM, from 1024 rows / every batch)
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl .device/whl/kaldi_native_fbank*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -2
R=$OUT/r; mkdir -p $R
for i in 1 2; do
  python3 -m wenet_triton.cli bench --out $R/base$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > $R/base$i.log 2>&1
  python3 -m wenet_triton.cli bench --out $R/silu$i --models aishell --engines torch_cuda_silu --batches 1,8,64 --seconds 10,20 > $R/silu$i.log 2>&1
  WENET_TRITON_SILU_MIN_ROWS=0 python3 -m wenet_triton.cli bench --out $R/siluall$i --models aishell --engines torch_cuda_silu --batches 1,8,64 --seconds 10,20 > $R/siluall$i.log 2>&1
done
tail -3 $R/base1.log
for f in $R/*/bench.csv; do echo "== $f"; cut -d, -f1-8 $f; done 2>/dev/null | head -80
WENET_TRITON_SILU_MIN_ROWS=0 PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 1 --seconds 10 --top 40 --fused-silu > $R/prof_silu_1x10.txt 2>&1
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 --top 40 --fused-silu > $R/prof_silu_64x20.txt 2>&1
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 --top 40 > $R/prof_base_64x20.txt 2>&1
cd $OUT && tar czf r.tgz r && rm -rf r
