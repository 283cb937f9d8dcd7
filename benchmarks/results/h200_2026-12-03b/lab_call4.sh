# session 19, call 4 (right after call 3, same machine): the served fused GPU default
# (configs/serving_gpu.yaml) with the Triton kernels on (WENET_TRITON_FUSED_SILU / _FFN / _VOCAB
# = 1, inherited by the model processes) then off, a server start each (its time: the SiLU
# GEMM tunes its tiles on first use, the others compile); perf_analyzer sync at c448 / c512,
# 5 s; served transcripts vs the CPU pipeline with the kernels on; carry .device_s19s
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
python3 -c "import tritonclient" || exit 3
[ -d /tmp/tritonserver ] || tar xJf .device_s19s/tritonserver_bundle.txz -C /tmp
R=/tmp/res4; mkdir -p $R
export WAV_DIR=.device_s19s/wavs PA_SECONDS=5 PA_BATCHES=" " PA_CONC=448:512:64
k=0
for f in 1 0; do
  k=$((k + 1)); export WENET_TRITON_FUSED_SILU=$f WENET_TRITON_FUSED_FFN=$f WENET_TRITON_FUSED_VOCAB=$f
  t0=$(date +%s)
  OUT=$R/r${k}_f$f SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
  echo "round $k kernels $f: server ready after $(( $(date +%s) - t0 )) s"
  OUT=$R/r${k}_f$f timeout 110 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
  [ $k = 1 ] && OUT=$R/r${k}_f$f timeout 80 scripts/gpu/serve.sh accuracy 2>&1 | tail -3
  OUT=$R/r${k}_f$f scripts/gpu/serve.sh stop > /dev/null 2>&1
done
tar czf $OUT/served4.tgz -C $R .
