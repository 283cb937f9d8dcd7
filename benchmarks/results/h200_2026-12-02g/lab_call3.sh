# session 17, call 3 (right after call 2, same machine): the fused GPU default served, perf_analyzer
# 5 s at c384 / c512 with the cores per process group (benchmarks/proc_cpu.py), then the same
# load straight to tritonserver's port (front left out), accuracy; carry .device_s17s .device_s17
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_PROFILE=20
python3 -c "import numpy, tritonclient; print(numpy.__version__)" || exit 3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
[ -d /tmp/tritonserver ] || tar xJf .device_s17s/tritonserver_bundle.txz -C /tmp
export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
R=/tmp/res3; mkdir -p $R; W=/tmp/wenet_triton_gpu
lscpu | grep -E "Model name|^CPU\(s\)|MHz" > $R/lscpu.txt
export WAV_DIR=.device_s17s/wavs SERVING_CONFIG=configs/serving_gpu.yaml PA_SECONDS=5 PA_BATCHES=" "
OUT=$R/f scripts/gpu/serve.sh start 2>&1 | tail -2
OUT=$R/f PA_CONC=384:512:128 scripts/gpu/serve.sh pa 2>&1 | tail -24
P=$(grep -oE "(GRPCInferenceService at|Triton ready: gRPC) [0-9.]*:[0-9]+" $W/triton.log | head -1 | grep -oE "[0-9]+$")
echo "tritonserver port $P"
OUT=$R/n PA_URL=127.0.0.1:$P PA_CONC=384:384:128 scripts/gpu/serve.sh pa 2>&1 | tail -14
OUT=$R/f scripts/gpu/serve.sh accuracy 2>&1 | tail -3
OUT=$R/f scripts/gpu/serve.sh stop
grep -hE "\[profile" $W/triton.log | tail -16 > $R/profile_lines.txt
tar czf $OUT/served.tgz -C $R . ; ls -la $OUT
