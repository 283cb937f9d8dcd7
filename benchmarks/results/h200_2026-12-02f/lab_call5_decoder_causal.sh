# session 16, call 5: decoder self-attention causal without a mask tensor: tests, A/B vs fe8d228, profiles
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s16/whl/*.whl .device/whl/kaldi*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
mkdir -p /tmp/old && tar xzf .device_s16/old.tgz -C /tmp/old
cp benchmarks/profile_gpu.py /tmp/old/benchmarks/profile_gpu.py
(cd /tmp/old && PYTHONPATH=/tmp/old python3 -c "from wenet_triton.engines import kernels; kernels.build('/tmp/old/libwenet_kernels.so')" 2>&1 | tail -1)
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m pytest -q tests/test_gpu.py -k "engine or decoder or rescore or chunk_encoder_transcripts" 2>&1 | tail -4 > $R/gpu_tests.log
tail -2 $R/gpu_tests.log
for i in 1 2; do
  (cd /tmp/old && PYTHONPATH=/tmp/old WENET_KERNELS_LIB=/tmp/old/libwenet_kernels.so python3 -m wenet_triton.cli bench --out $R/old$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > $R/old$i.log 2>&1)
  python3 -m wenet_triton.cli bench --out $R/new$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > $R/new$i.log 2>&1
done
for f in $R/old1 $R/new1 $R/old2 $R/new2; do echo "== $f"; cut -d, -f2-9 $f/bench.csv; done
PYTHONPATH=. python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 --top 30 > $R/prof_new_64x20.txt 2>&1
(cd /tmp/old && PYTHONPATH=/tmp/old WENET_KERNELS_LIB=/tmp/old/libwenet_kernels.so python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 --top 30 > $R/prof_old_64x20.txt 2>&1)
sed -n '/== decoder: aten/,/== decoder kernels/p' $R/prof_old_64x20.txt $R/prof_new_64x20.txt | cut -c1-150
cd $OUT && tar czf r.tgz r && rm -rf r
