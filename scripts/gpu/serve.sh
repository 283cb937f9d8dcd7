#!/usr/bin/env bash
# Serve on a GPU host and measure it: Triton with the torch_cuda engine (configs/serving_gpu.yaml:
# one pass per batch, fbank + encoder + GPU search + decoder in the `fused` model; the ensemble:
# SERVING_CONFIG=configs/serving_gpu_ensemble.yaml), accuracy against the CPU pipeline, the
# tritonclient concurrency sweep (CSV + plot + per-model queue/compute), perf_analyzer
# concurrency and batch sweeps (with the cores each process group used: benchmarks/proc_cpu.py),
# a distributed headless locust run. Results in $OUT.
#
#   scripts/gpu/serve.sh [all]             # start accuracy sweep pa locust stop
#   scripts/gpu/serve.sh start sweep       # any steps, in order; the server stays up
#   scripts/gpu/serve.sh pa locust stop    #   between invocations until `stop`
#   scripts/gpu/serve.sh start first stop  # what the first requests after a start wait
#                                          #   (benchmarks/first_requests.py; FIRST_LABEL, FIRST_WAVES)
#   SERVING_CONFIG=configs/serving_gpu_streams.yaml scripts/gpu/serve.sh start streams stop
#
# Needs: this package installed (pip install ".[server,loadtest]" or NVIDIA's Triton image:
# set WENET_TRITON_SERVER_DIR or TRITONSERVER if tritonserver is elsewhere), nvcc for the
# kernels, perf_analyzer (pip install perf-analyzer) for `pa`.
# Env: MODEL (default models/demo_zh_synth; "aishell" = a random-weight AISHELL-1-shape
# model), WAV_DIR (wavs + a Kaldi `text` file; default the package's samples), OUT, WORK
# (scratch: repo, pid file, logs; default /tmp/wenet_triton_gpu), GRPC_PORT (8001; metrics
# on GRPC_PORT+1, health on +2), GPUS (build-repo --gpus: e.g. 0,1 or all; docs/multigpu.md),
# SERVE_ARGS (more `serve` flags, e.g. --no-guard), SERVING_CONFIG, SECONDS_LIST, CONC, PA_SECONDS ("2 5 10 20"), PA_CONC,
# PA_BATCHES, PA_INTERVAL / PA_TRIALS / PA_STABILITY (perf_analyzer's window in ms, trials, stability %),
# PA_REQUESTS (auto: each concurrency of PA_CONC measured over a fixed number of requests that fits
# the host's memory, perf_analyzer keeping what it sends; N: that many; 0: time windows),
# PA_MEM_FLOOR_MB (stop the load when the host's memory headroom falls below it, MB; default auto:
# 8192 or a tenth of the host's memory, whichever is less),
# PA_EXTRA (more perf_analyzer flags, e.g. --streaming: requests as messages on gRPC
# streams), PA_MODEL (default attention_rescoring; `fused` asks the fused model directly,
# without the one-step ensemble), PA_URL (default the guard's GRPC; tritonserver's own port to
# leave the guard out), LOCUST_USERS, LOCUST_TIME, LOCUST_WORKERS, CONNECTIONS (gRPC connections of the sweep,
# default 16), PA_CHANNEL_SHARE (perf_analyzer clients per gRPC channel, default 1: one connection
# each; the kernel spreads connections, not requests, over `serve`'s guard workers); for
# `streams`: STREAMS (list), STREAM_CHUNK_MS ("640 320"), STREAM_TRANSPORT (stream | unary:
# one ModelStreamInfer call per stream (default), or one gRPC call per chunk), STREAM_DURATION, STREAM_PROCS (client
# processes), STREAM_TIMEOUT. MPS=1: `serve --mps` (a CUDA MPS daemon of the server's own, so
# the instances' kernels share the GPU side by side instead of taking turns), MPS=0: `--no-mps`;
# unset: the serving config's `mps` (auto in configs/serving_gpu.yaml).
set -uo pipefail
# `timeout N scripts/gpu/serve.sh pa` (or Ctrl-C) must not leave perf_analyzer or locust running
# against a server that a later `stop` takes away: long steps run as children waited on (bash
# runs a trap only between commands, and `wait` is one) and go down with the script
trap 'pkill -TERM -P $$ 2>/dev/null; exit 143' TERM INT
waited() { "$@" & wait $!; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${OUT:-gpu_serve_out}
WORK=${WORK:-/tmp/wenet_triton_gpu}
PORT=${GRPC_PORT:-8001}
GRPC=127.0.0.1:$PORT
WAV_DIR=${WAV_DIR:-$(python3 -c 'from wenet_triton.paths import SAMPLES_DIR; print(SAMPLES_DIR)')}
REPO=$WORK/repo
PIDFILE=$WORK/server.pid
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 WENET_TRITON_CACHE=${WENET_TRITON_CACHE:-$WORK/cache}
cli() { python3 -m wenet_triton.cli "$@"; }
tool() { python3 -c "import shutil,sys,os; print(shutil.which('$1') or os.path.join(os.path.dirname(sys.executable),'$1'))"; }
ready() { python3 -c "from wenet_triton.serving.client import wait_until_ready as w; w('$GRPC', ${1:-1})" >/dev/null 2>&1; }

start() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then echo "server already up"; return 0; fi
  cli build-plugins > "$OUT/server.log" 2>&1 || { tail "$OUT/server.log"; exit 1; }
  local model=${MODEL:-$root/models/demo_zh_synth}
  if [ "$model" = aishell ]; then
    model=$WORK/aishell_model
    [ -f "$model/train.yaml" ] || python3 -c "from wenet_triton.model import synthetic as s; s.save_spec(s.random_spec(), '$model')"
  fi
  cli build-repo --model "$model" --engine torch_cuda \
    --config "${SERVING_CONFIG:-$root/configs/serving_gpu.yaml}" ${GPUS:+--gpus "$GPUS"} \
    --out "$REPO" >> "$OUT/server.log" 2>&1 || exit 1
  echo "$model" > "$WORK/served_model"
  local mps=(); [ "${MPS:-}" = 1 ] && mps=(--mps); [ "${MPS:-}" = 0 ] && mps=(--no-mps)
  # shellcheck disable=SC2086  # SERVE_ARGS: further `wenet-triton serve` flags, word-split
  setsid python3 -m wenet_triton.cli serve --repo "$REPO" --host 127.0.0.1 --grpc-port "$PORT" \
    --metrics-port $((PORT + 1)) --health-port $((PORT + 2)) ${SERVE_ARGS:-} "${mps[@]}" > "$WORK/triton.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  ready 300 || { tail -20 "$WORK/triton.log"; exit 1; }
  echo "serving $model (pid $(cat "$PIDFILE"))"
}

accuracy() {  # served (GPU fbank + fp16 engine) vs the CPU pipeline (knf + onnxruntime fp32)
  local model beam
  model=$(cat "$WORK/served_model")
  cli transcribe --server "$GRPC" --concurrency 16 --ref "$WAV_DIR/text" "$WAV_DIR" \
    > "$OUT/served.txt" 2> "$OUT/served_cer.txt"
  # the served decoding's beam (a serving config may override the model's)
  beam=$(python3 -c "import json; print(json.load(open('$REPO/serving.json'))['decoding']['beam_size'])")
  cli transcribe --model "$model" --engine onnxruntime --beam-size "$beam" \
    --ref "$WAV_DIR/text" "$WAV_DIR" > "$OUT/cpu_onnxruntime.txt" 2> "$OUT/cpu_cer.txt"
  python3 - "$OUT" <<'PY'
import sys
out = sys.argv[1]
read = lambda f: dict(l.rstrip("\n").split("\t", 1) for l in open(f"{out}/{f}") if "\t" in l)
a, b = read("served.txt"), read("cpu_onnxruntime.txt")
same = sum(a.get(k) == v for k, v in b.items())
print(f"accuracy: {same}/{len(b)} served transcripts identical to the CPU pipeline")
PY
  grep -h -i "cer" "$OUT/served_cer.txt" "$OUT/cpu_cer.txt" | head -6
}

sweep() {
  (cd "$root" && python3 -m loadtest.sweep --server "$GRPC" --metrics "127.0.0.1:$((PORT + 1))" \
    --wav-dir "$WAV_DIR" --seconds "${SECONDS_LIST:-2,5,10,20}" --concurrency "${CONC:-1,32,64,128,256}" \
    --per-worker 16 --max-requests 8000 --max-seconds 40 --connections "${CONNECTIONS:-16}" \
    --out "$OUT") | tee "$OUT/sweep.log"
}

pa() {  # perf_analyzer: concurrency sweep per length (one utterance per request), batch sweep (-b) at 5 s
  local PA secs=${PA_SECONDS:-5}
  PA=$(tool perf_analyzer)
  (cd "$root" && python3 -m loadtest.perf_analyzer_inputs --wav-dir "$WAV_DIR" --seconds "${secs// /,},5" \
    --out "$WORK/pa") > /dev/null
  local opts=(-m "${PA_MODEL:-attention_rescoring}" -i grpc -u "${PA_URL:-$GRPC}")
  # shellcheck disable=SC2206  # PA_EXTRA: more perf_analyzer flags, word-split (e.g. --streaming)
  opts+=(${PA_EXTRA:-})
  # PA_INTERVAL (ms), PA_TRIALS, PA_STABILITY (%): perf_analyzer's window and when it settles (at
  # 10 s / c256 on an H200, 25 % within 10 trials of 4 s was not reached once: try 50); used by the
  # batch sweep, with PA_REQUESTS=0, and where a fixed count gave no result
  local windows=(--measurement-interval "${PA_INTERVAL:-4000}" --max-trials "${PA_TRIALS:-10}"
                 --stability-percentage "${PA_STABILITY:-25}")
  : > "$OUT/perf_analyzer.log"
  # Triton's C++ client shares one channel among 6 clients by default: 16 threads = 3 connections,
  # too few for 4 guard workers; one connection per client instead
  export TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=${PA_CHANNEL_SHARE:-1}
  local sampler msampler
  for sec in $secs; do
    # where the host's cores go meanwhile (per process group, every 2 s): cpu_<sec>s.csv
    (cd "$root" && exec python3 -m benchmarks.proc_cpu --out "$OUT/cpu_${sec}s.csv" > "$OUT/cpu_${sec}s.txt") &
    sampler=$!
    # and its memory (private per process group, /dev/shm, MemAvailable): mem_<sec>s.csv; a load that
    # leaks is stopped at PA_MEM_FLOOR_MB of headroom left instead of driving the host into the OOM killer
    (cd "$root" && exec python3 -m benchmarks.proc_mem --out "$OUT/mem_${sec}s.csv" \
      --stop-load-below-mb "${PA_MEM_FLOOR_MB:-auto}" > "$OUT/mem_${sec}s.txt") &
    msampler=$!
    local data=(--input-data "$WORK/pa/wav_${sec}s.json" --shape "WAV:$((sec * 16000))")
    if [ "${PA_REQUESTS:-auto}" = 0 ]; then  # time windows until perf_analyzer's measure settles
      waited timeout 300 "$PA" "${opts[@]}" "${windows[@]}" "${data[@]}" \
        --concurrency-range "${PA_CONC:-64:256:64}" -f "$OUT/perf_analyzer_${sec}s.csv" >> "$OUT/perf_analyzer.log" 2>&1
      echo "perf_analyzer ${sec} s rc=$?"
    else
      # perf_analyzer 2.60 keeps the requests it sends until its measurement ends (~100 GB a minute
      # at 10 s / c256): one measurement of a fixed count per concurrency, sized to fit the host's
      # memory (PA_REQUESTS=auto: loadtest.perf_analyzer_inputs count), after 4 requests per client
      # of warm-up (the first batches of a new length wait for graph captures)
      local c n lo hi st rc rows
      IFS=: read -r lo hi st <<< "${PA_CONC:-64:256:64}"
      : > "$OUT/perf_analyzer_${sec}s.csv"
      for c in $(seq "$lo" "${st:-1}" "${hi:-$lo}"); do
        n=${PA_REQUESTS:-auto}
        [ "$n" = auto ] && n=$(cd "$root" && python3 -m loadtest.perf_analyzer_inputs count --seconds "$sec" --concurrency "$c")
        rm -f "$WORK/pa_one.csv"
        waited timeout 300 "$PA" "${opts[@]}" "${data[@]}" --concurrency-range "$c:$c" --request-count "$n" \
          --warmup-request-count "$((4 * c))" -f "$WORK/pa_one.csv" >> "$OUT/perf_analyzer.log" 2>&1
        rc=$?
        echo "perf_analyzer ${sec} s c$c ($n requests) rc=$rc"
        rows=0; [ -f "$WORK/pa_one.csv" ] && rows=$(wc -l < "$WORK/pa_one.csv")
        # no row, and not stopped (timeout, the memory floor): this perf_analyzer may lack the options
        if [ "$rows" -lt 2 ] && [ "$rc" != 124 ] && [ "$rc" != 143 ] && [ "$rc" != 137 ]; then
          echo "no result from a fixed count: time windows instead"
          waited timeout 300 "$PA" "${opts[@]}" "${windows[@]}" "${data[@]}" --concurrency-range "$c:$c" \
            -f "$WORK/pa_one.csv" >> "$OUT/perf_analyzer.log" 2>&1
        fi
        if [ -s "$WORK/pa_one.csv" ]; then  # one CSV per length: the header once, a row per concurrency
          local from=1; [ -s "$OUT/perf_analyzer_${sec}s.csv" ] && from=2
          tail -n +"$from" "$WORK/pa_one.csv" >> "$OUT/perf_analyzer_${sec}s.csv"
        fi
      done
    fi
    kill -INT "$sampler" "$msampler"; wait "$sampler" "$msampler"; cat "$OUT/cpu_${sec}s.txt" "$OUT/mem_${sec}s.txt"
  done
  for b in ${PA_BATCHES:-1 4 16}; do
    waited timeout 90 "$PA" "${opts[@]}" "${windows[@]}" --input-data "$WORK/pa/wav_5s.json" --shape WAV:80000 -b "$b" \
      --concurrency-range "$((128 / b)):$((128 / b))" -f "$OUT/perf_analyzer_5s_b$b.csv" >> "$OUT/perf_analyzer.log" 2>&1
    echo "perf_analyzer batch $b rc=$?"
  done
  grep -E "Batch size|Concurrency:|Throughput|p99 latency" "$OUT/perf_analyzer.log" | head -60
}

locust_run() {  # distributed locust: one master, LOCUST_WORKERS gevent workers
  local n=${LOCUST_WORKERS:-4} L pids=()
  L=$(tool locust)
  local args=(-f "$root/loadtest/locustfile.py" --host "$GRPC" --wav-dir "$WAV_DIR")
  for _ in $(seq "$n"); do "$L" "${args[@]}" --worker > /dev/null 2>&1 & pids+=($!); done
  waited timeout 200 "$L" "${args[@]}" --master --expect-workers "$n" --headless -u "${LOCUST_USERS:-128}" -r 64 \
    -t "${LOCUST_TIME:-60s}" --csv "$OUT/locust" --only-summary > "$OUT/locust.log" 2>&1
  echo "locust rc=$?"; sleep 3
  kill "${pids[@]}" 2>/dev/null  # workers can outlive their master's quit
  python3 - "$OUT" <<'PY'
import csv, sys
for r in csv.DictReader(open(f"{sys.argv[1]}/locust_stats.csv")):
    print(f"locust {r['Name']:<28} requests {r['Request Count']:>6} failures {r['Failure Count']:>3} "
          f"{float(r['Requests/s']):7.1f} req/s  p50 {r['50%']} ms  p99 {r['99%']} ms")
PY
}

streams() {  # real-time streams against the `streaming` model (configs/serving_gpu_streams.yaml)
  local ms
  for ms in ${STREAM_CHUNK_MS:-640 320}; do
    (cd "$root" && timeout "${STREAM_TIMEOUT:-400}" python3 -m loadtest.stream_sweep --server "$GRPC" \
      --wav-dir "$WAV_DIR" --streams "${STREAMS:-256,1024,2048,3072,4096}" --seconds 8 \
      --duration "${STREAM_DURATION:-16}" --chunk-ms "$ms" --procs "${STREAM_PROCS:-6}" \
      --transport "${STREAM_TRANSPORT:-stream}" \
      --max-seconds 90 --out "$OUT/streams_${ms}ms") | tee "$OUT/streams_${ms}ms.log"
  done
}

first() {  # the first requests right after `start` (new shapes, one wave after the other)
  (cd "$root" && python3 -m benchmarks.first_requests --url "$GRPC" --wav-dir "$WAV_DIR" \
    --out "$OUT/first_requests.csv" --label "${FIRST_LABEL:-$(basename "${SERVING_CONFIG:-serving_gpu.yaml}" .yaml)}" \
    ${FIRST_WAVES:+--waves "$FIRST_WAVES"} &&
    python3 -m benchmarks.first_requests plot --out "$OUT/first_requests.png" "$OUT/first_requests.csv" > /dev/null)
}

stop() {  # the server we started (its pid file), and everything in its process group
  if [ -f "$PIDFILE" ]; then
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null
    rm -f "$PIDFILE"
  fi
  cp "$WORK/triton.log" "$OUT/triton.log" 2>/dev/null
  grep -iE "error|Traceback" "$OUT/triton.log" | head -5
}

steps=("$@"); [ ${#steps[@]} -eq 0 ] || [ "${steps[0]}" = all ] && steps=(start accuracy sweep pa locust stop)
for s in "${steps[@]}"; do
  case $s in
    start|accuracy|sweep|pa|streams|first|stop) $s ;;
    locust) locust_run ;;
    *) echo "unknown step $s (start first accuracy sweep pa streams locust stop all)"; exit 2 ;;
  esac
done
