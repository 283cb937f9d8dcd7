#!/usr/bin/env bash
# Serve on the GPU machine and load it: Triton (the nvidia-pytriton server bundle) with the
# torch_cuda engine on a random-weight AISHELL-shape checkpoint, a concurrency sweep with
# our tritonclient client (CSV + plot + per-model queue/compute from the metrics port) and a
# perf_analyzer run. Results in $OUT. Assets: build_engines/pack_serve_assets.sh, then two
# device calls on one warm machine (the tree + both asset folders exceed the 64 MiB carry):
#   carry .device_serve_whl:  bash build_engines/gpu_serve.sh stage   # installs the wheels
#   carry .device_serve:      bash build_engines/gpu_serve.sh
# Note: stage installs numpy 1.26 into the machine's Python (the stub's environment).
# Env: MODEL (serve this model dir, e.g. models/demo_zh_synth; default a random-weight
# AISHELL-shape checkpoint), SERVING_CONFIG, SECONDS_LIST, CONC, SKIP_PERF_ANALYZER.
set -uo pipefail
OUT=${OUT:-gpu_serve_out}
D=.device_serve
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WENET_TRITON_CACHE=/tmp/wtcache
if [ "${1:-}" = stage ]; then
  # into the interpreter's own environment: the python backend stub takes its packages from it
  python3 -m pip install -q --no-index --no-deps --no-compile .device_serve_whl/*.whl && \
    python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('staged, numpy', numpy.__version__)"
  exit
fi
python3 -c "import numpy, sys; sys.exit(0 if numpy.__version__.startswith('1.') else 1)" || {
  echo "numpy 1.x missing: run 'gpu_serve.sh stage' (carry .device_serve_whl) on this machine first"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
tar xJf $D/tritonserver_bundle.txz -C /tmp && export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
python3 -m wenet_triton.cli build-plugins > "$OUT/server.log" 2>&1 || { tail "$OUT/server.log"; exit 1; }
MODEL=${MODEL:-/tmp/aishell_model}
[ -f "$MODEL/train.yaml" ] || python3 -c "from wenet_triton import bench; bench.write_model_dir(bench.random_spec(), '$MODEL')"
python3 -m wenet_triton.cli build-repo --model "$MODEL" --engine torch_cuda \
  --config ${SERVING_CONFIG:-build_engines/serving_gpu.yaml} --out /tmp/repo_gpu >> "$OUT/server.log" 2>&1 || exit 1
setsid python3 -m wenet_triton.cli serve --repo /tmp/repo_gpu --host 127.0.0.1 >> "$OUT/server.log" 2>&1 &
python3 loadtest/sweep.py --server 127.0.0.1:8001 --metrics 127.0.0.1:8002 --wav-dir $D/wavs \
  --seconds ${SECONDS_LIST:-5,10} --concurrency ${CONC:-1,8,32,64,128} --per-worker 16 --max-requests 6000 \
  --max-seconds 60 --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/sweep.log"
if [ -z "${SKIP_PERF_ANALYZER:-}" ]; then
PA=$(python3 -c "import shutil,sys,os; print(shutil.which('perf_analyzer') or os.path.join(os.path.dirname(sys.executable),'perf_analyzer'))")
python3 loadtest/perf_analyzer_inputs.py --wav-dir $D/wavs --seconds 5 --out /tmp/pa > /dev/null
timeout 200 "$PA" -m attention_rescoring -i grpc -u 127.0.0.1:8001 --input-data /tmp/pa/wav_5s.json \
  --shape WAV:80000 --concurrency-range 16:128:16 --measurement-interval 4000 --max-trials 4 \
  --stability-percentage 30 -f "$OUT/perf_analyzer_5s.csv" > "$OUT/perf_analyzer.log" 2>&1
echo "perf_analyzer rc=$?"; grep -E "Concurrency:|Throughput|p99 latency" "$OUT/perf_analyzer.log" | head -30
fi
pkill -f "wenet_triton.cli serve"; sleep 3; pkill -9 -f tritonserver
grep -iE "error|Traceback" "$OUT/server.log" | head -5
