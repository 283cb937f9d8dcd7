# fused GPU default served, perf_analyzer unary vs --streaming (after install.sh): carry .device_serve .device_s15
set -x
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
[ -d /tmp/tritonserver ] || tar xJf .device_serve/tritonserver_bundle.txz -C /tmp
export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
R=/tmp/resf; mkdir -p $R
export WAV_DIR=.device_serve/wavs SERVING_CONFIG=configs/serving_gpu.yaml PA_SECONDS=5 PA_CONC=384:512:128 PA_BATCHES=4
OUT=$R/f scripts/gpu/serve.sh start 2>&1 | tail -2
OUT=$R/u scripts/gpu/serve.sh pa 2>&1 | tail -14
OUT=$R/st PA_EXTRA=--streaming scripts/gpu/serve.sh pa 2>&1 | tail -14
OUT=$R/f scripts/gpu/serve.sh accuracy 2>&1 | tail -3
OUT=$R/f scripts/gpu/serve.sh stop
tar czf $OUT/fused.tgz -C $R . ; ls -la $OUT
