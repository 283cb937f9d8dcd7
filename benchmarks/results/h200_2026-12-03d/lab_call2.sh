# session 21, call 2 (call 1's warm machine; carry .device_s21s: the tritonserver bundle of
# docs/lab/pack_serve_assets.sh + 4 synth_test wavs with their text: 6 did not fit the 64 MiB): the served table from one
# run. The GPU default (configs/serving_gpu.yaml: one pass per batch, GPU search + LM) at 5 s,
# c384-c512, the served transcripts against the CPU pipeline, 2 / 10 / 20 s at c256; then, in
# the same call, the configuration the issue started from (configs/serving_gpu_ensemble.yaml:
# the five-model ensemble, C++ search + LM) at 5 s, c128 / c256. Default decoding (LM, beam 20),
# perf_analyzer through serve's checking front, on the same 16 cores.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
[ -f /tmp/s21_installed ] || { echo "fresh machine: call 1's installs are gone"; exit 3; }
[ -d /tmp/tritonserver ] || tar xJf .device_s21s/tritonserver_bundle.txz -C /tmp
t0=$(date +%s)
R=/tmp/res2; mkdir -p $R
export WAV_DIR=.device_s21s/wavs PA_BATCHES=" "
OUT=$R/gpu SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
echo "gpu default ready after $(( $(date +%s) - t0 )) s"
OUT=$R/gpu PA_SECONDS=5 PA_CONC=384:512:64 timeout 150 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
OUT=$R/gpu timeout 60 scripts/gpu/serve.sh accuracy 2>&1 | tail -2
echo "gpu 5 s $(( $(date +%s) - t0 )) s"
OUT=$R/gpu_len PA_SECONDS="2 10 20" PA_CONC=256:256:1 timeout 150 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|perf_analyzer "
OUT=$R/gpu scripts/gpu/serve.sh stop > /dev/null 2>&1
echo "gpu lengths $(( $(date +%s) - t0 )) s"
OUT=$R/ens SERVING_CONFIG=configs/serving_gpu_ensemble.yaml timeout 120 scripts/gpu/serve.sh start 2>&1 | tail -1
OUT=$R/ens PA_SECONDS=5 PA_CONC=128:256:128 timeout 100 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
OUT=$R/ens scripts/gpu/serve.sh stop > /dev/null 2>&1
echo "ensemble $(( $(date +%s) - t0 )) s"
tar czf $OUT/served.tgz -C $R .
