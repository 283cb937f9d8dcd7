# session 18, call 5 (fresh machine): torch_cuda_silu with the row policy (pointer kernel below
# 2,048 rows, persistent TMA kernel from there; every batch fused) vs torch_cuda, alternating;
# carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
for i in 1 2; do
  timeout 70 python3 -m wenet_triton.cli bench --out /tmp/b/base$i --models aishell --engines torch_cuda --batches 1,8,64 --seconds 10,20 > /tmp/base$i.log 2>&1
  timeout 70 python3 -m wenet_triton.cli bench --out /tmp/b/silu$i --models aishell --engines torch_cuda_silu --batches 1,8,64 --seconds 10,20 > /tmp/silu$i.log 2>&1
done
for f in /tmp/b/*/bench.csv; do echo "== $f"; cut -d, -f2-5,7,9 $f; done 2>/dev/null | tee $OUT/bench_ab5.txt
cd /tmp/b && tar czf $OUT/bench_ab5.tgz .
