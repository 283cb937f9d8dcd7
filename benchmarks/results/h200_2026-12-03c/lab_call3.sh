# session 20, call 3: GPU tests after call 1's fixes (FP8 dot promoted to fp32 per BK, CTC test
# with the k-th tie, first conv + CTC head for batches on by default), the FFN A/B with FP8,
# the engine A/B (new defaults vs session 19's: WENET_TRITON_FUSED_CONV1=0 _CTC=0, and FP8),
# carry .device_fp8 (kaldi-native-fbank wheel, synth_test, WeNet v2.2.1 for call 4)
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
[ -f /tmp/s20_installed ] || { python3 -m pip install -q --no-index --no-deps .device_fp8/*.whl > /dev/null 2>&1; python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1; python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1; touch /tmp/s20_installed; }
echo "install $(( $(date +%s) - t0 )) s"
: tests ran in the first form of this call
echo "tests $(( $(date +%s) - t0 )) s"
timeout 60 python3 -m benchmarks.ffn_fused_ab --rows 4096,32768 --dec-rows 410 --out $OUT/kernels.csv 2>&1 | grep encoder_silu
for i in 1 2; do for e in new s19 fp8; do [ $e$i = fp82 ] && continue
  case $e in new) env="" ; eng=torch_cuda;; s19) env="WENET_TRITON_FUSED_CONV1=0 WENET_TRITON_FUSED_CTC=0"; eng=torch_cuda;; fp8) env=""; eng=torch_cuda_fp8;; esac
  env $env timeout 50 python3 -m wenet_triton.cli bench --out /tmp/b/$e$i --models aishell --engines $eng --batches 1,64 --seconds 10,20 > /tmp/$e$i.log 2>&1 || tail -3 /tmp/$e$i.log
  echo "$e$i"; cut -d, -f3-5,7,9 /tmp/b/$e$i/bench.csv | tail -n +2
  [ -f $OUT/bench.csv ] || sed -n 1p /tmp/b/$e$i/bench.csv | sed 's/^/variant,round,/' > $OUT/bench.csv
  tail -n +2 /tmp/b/$e$i/bench.csv | sed "s/^/$e,$i,/" >> $OUT/bench.csv  # one file: $OUT returns 8 at most
done; done
echo "bench $(( $(date +%s) - t0 )) s"
echo "done $(( $(date +%s) - t0 )) s"
