#!/usr/bin/env bash
# Serve on the GPU machine and load it: Triton (the nvidia-pytriton server bundle) with the
# torch_cuda engine and fbank inside the encoder process (build_engines/serving_gpu.yaml);
# accuracy against the CPU pipeline, our tritonclient concurrency sweep (CSV + plot +
# per-model queue/compute from the metrics port), perf_analyzer concurrency and batch
# sweeps, a distributed headless locust run. Results in $OUT.
# Assets: build_engines/pack_serve_assets.sh; the tree + two asset folders exceed the
# 64 MiB carry, so: one call `stage` carrying .device_serve_whl (installs the wheels into the
# machine's Python, which the python-backend stub uses), one more carrying
# .device_serve_whl_locust for the locust step, then calls carrying .device_serve:
#   bash build_engines/gpu_serve.sh [all]            # start accuracy sweep pa locust stop
#   bash build_engines/gpu_serve.sh start sweep      # any steps, in order; the server stays
#   bash build_engines/gpu_serve.sh pa locust stop   #   up between calls while warm
# Env: MODEL (default models/demo_zh_synth; "aishell" = random-weight AISHELL-shape
# checkpoint), SERVING_CONFIG, SECONDS_LIST, CONC, PA_SECONDS (e.g. "2 5 10 20"), PA_CONC,
# PA_BATCHES, LOCUST_USERS,
# LOCUST_TIME, LOCUST_WORKERS.
set -uo pipefail
OUT=${OUT:-gpu_serve_out}
D=.device_serve
REPO=/tmp/repo_gpu
GRPC=127.0.0.1:8001
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WENET_TRITON_CACHE=/tmp/wtcache
py() { python3 "$@" 2>&1 | grep -v Warn; }

stage() {  # whichever wheel folder this call carries (.device_serve_whl, .device_serve_whl_locust)
  local dirs=() d
  for d in .device_serve_whl .device_serve_whl_locust; do [ -d $d ] && dirs+=("$d"); done
  [ ${#dirs[@]} -gt 0 ] || { echo "stage: carry .device_serve_whl or .device_serve_whl_locust"; exit 1; }
  for d in "${dirs[@]}"; do
    python3 -m pip install -q --no-index --no-deps --no-compile "$d"/*.whl || exit 1
    echo "staged $d"
  done
  python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('numpy', numpy.__version__)" 2>/dev/null
  python3 -c "import locust; print('locust', locust.__version__)" 2>/dev/null || echo "locust not staged"
}

ready() { python3 -c "from wenet_triton.client import wait_until_ready as w; w('$GRPC', ${1:-1})" >/dev/null 2>&1; }

start() {
  if ready; then echo "server already up"; return 0; fi
  python3 -c "import numpy, sys; sys.exit(0 if numpy.__version__.startswith('1.') else 1)" || {
    echo "numpy 1.x missing: run 'gpu_serve.sh stage' (carry .device_serve_whl) on this machine first"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
  [ -d /tmp/tritonserver ] || tar xJf $D/tritonserver_bundle.txz -C /tmp
  export WENET_TRITON_SERVER_DIR=/tmp/tritonserver
  python3 -m wenet_triton.cli build-plugins > "$OUT/server.log" 2>&1 || { tail "$OUT/server.log"; exit 1; }
  local model=${MODEL:-models/demo_zh_synth}
  if [ "$model" = aishell ]; then
    model=/tmp/aishell_model
    [ -f $model/train.yaml ] || python3 -c "from wenet_triton import bench; bench.write_model_dir(bench.random_spec(), '$model')"
  fi
  python3 -m wenet_triton.cli build-repo --model "$model" --engine torch_cuda \
    --config "${SERVING_CONFIG:-build_engines/serving_gpu.yaml}" --out $REPO >> "$OUT/server.log" 2>&1 || exit 1
  echo "$model" > /tmp/served_model
  setsid python3 -m wenet_triton.cli serve --repo $REPO --host 127.0.0.1 > /tmp/server.log 2>&1 < /dev/null &
  ready 300 || { tail -20 /tmp/server.log; exit 1; }
  echo "serving $model"
}

accuracy() {  # served (GPU fbank + fp16 engine) vs the CPU pipeline (knf + onnxruntime fp32)
  local model; model=$(cat /tmp/served_model)
  python3 client/transcribe.py --server $GRPC --concurrency 16 --ref $D/text $D/wavs \
    > "$OUT/served.txt" 2> "$OUT/served_cer.txt"
  local beam  # the served decoding's beam (a serving config may override the model's)
  beam=$(python3 -c "import json; print(json.load(open('$REPO/serving.json'))['decoding']['beam_size'])")
  python3 -m wenet_triton.cli transcribe --model "$model" --engine onnxruntime --beam-size "$beam" \
    --ref $D/text $D/wavs > "$OUT/cpu_onnxruntime.txt" 2> "$OUT/cpu_cer.txt"
  python3 - "$OUT" <<'EOF'
import sys
out = sys.argv[1]
read = lambda f: dict(l.rstrip("\n").split("\t", 1) for l in open(f"{out}/{f}") if "\t" in l)
a, b = read("served.txt"), read("cpu_onnxruntime.txt")
same = sum(a.get(k) == v for k, v in b.items())
print(f"accuracy: {same}/{len(b)} served transcripts identical to the CPU pipeline")
EOF
  grep -h -i "cer" "$OUT/served_cer.txt" "$OUT/cpu_cer.txt" | head -6
}

sweep() {
  py loadtest/sweep.py --server $GRPC --metrics 127.0.0.1:8002 --wav-dir $D/wavs \
    --seconds "${SECONDS_LIST:-2,5,10,20}" --concurrency "${CONC:-1,32,64,128,256}" --per-worker 16 \
    --max-requests 8000 --max-seconds 40 --out "$OUT" | tee "$OUT/sweep.log"
}

pa() {  # perf_analyzer: concurrency sweep per length (one utterance per request), batch sweep (-b) at 5 s
  local PA; PA=$(python3 -c "import shutil,sys,os; print(shutil.which('perf_analyzer') or os.path.join(os.path.dirname(sys.executable),'perf_analyzer'))")
  local secs=${PA_SECONDS:-5}
  python3 loadtest/perf_analyzer_inputs.py --wav-dir $D/wavs --seconds "${secs// /,},5" --out /tmp/pa > /dev/null
  local opts=(-m attention_rescoring -i grpc -u "$GRPC" --measurement-interval 4000 --max-trials 10
              --stability-percentage 25)
  : > "$OUT/perf_analyzer.log"
  for sec in $secs; do
    timeout 300 "$PA" "${opts[@]}" --input-data "/tmp/pa/wav_${sec}s.json" --shape "WAV:$((sec * 16000))" \
      --concurrency-range "${PA_CONC:-64:256:64}" -f "$OUT/perf_analyzer_${sec}s.csv" >> "$OUT/perf_analyzer.log" 2>&1
    echo "perf_analyzer ${sec} s rc=$?"
  done
  for b in ${PA_BATCHES:-1 4 16}; do
    timeout 90 "$PA" "${opts[@]}" --input-data /tmp/pa/wav_5s.json --shape WAV:80000 -b "$b" \
      --concurrency-range "$((128 / b)):$((128 / b))" -f "$OUT/perf_analyzer_5s_b$b.csv" >> "$OUT/perf_analyzer.log" 2>&1
    echo "perf_analyzer batch $b rc=$?"
  done
  grep -E "Batch size|Concurrency:|Throughput|p99 latency" "$OUT/perf_analyzer.log" | head -60
}

locust_run() {  # distributed locust: one master, LOCUST_WORKERS gevent workers
  local n=${LOCUST_WORKERS:-4} L
  L=$(python3 -c "import shutil,sys,os; print(shutil.which('locust') or os.path.join(os.path.dirname(sys.executable),'locust'))")
  local args=(-f loadtest/locustfile.py --host "$GRPC" --wav-dir "$D/wavs")
  for _ in $(seq "$n"); do "$L" "${args[@]}" --worker > /dev/null 2>&1 & done
  timeout 200 "$L" "${args[@]}" --master --expect-workers "$n" --headless -u "${LOCUST_USERS:-128}" -r 64 \
    -t "${LOCUST_TIME:-60s}" --csv "$OUT/locust" --only-summary > "$OUT/locust.log" 2>&1
  echo "locust rc=$?"; sleep 3
  pkill -f "locustfile.py.*--worker"  # workers can outlive their master's quit
  python3 - "$OUT" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/locust_stats.csv")))
for r in rows:
    print(f"locust {r['Name']:<28} requests {r['Request Count']:>6} failures {r['Failure Count']:>3} "
          f"{float(r['Requests/s']):7.1f} req/s  p50 {r['50%']} ms  p99 {r['99%']} ms")
EOF
}

stop() {
  pkill -f "wenet_triton.cli serve"; sleep 3; pkill -9 -f tritonserver
  cp /tmp/server.log "$OUT/triton.log" 2>/dev/null
  grep -iE "error|Traceback" "$OUT/triton.log" | head -5
}

steps=("$@"); [ ${#steps[@]} -eq 0 ] || [ "${steps[0]}" = all ] && steps=(start accuracy sweep pa locust stop)
for s in "${steps[@]}"; do
  case $s in
    stage|start|accuracy|sweep|pa|stop) $s ;;
    locust) locust_run ;;
    *) echo "unknown step $s (stage start accuracy sweep pa locust stop all)"; exit 2 ;;
  esac
done
