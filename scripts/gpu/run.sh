#!/usr/bin/env bash
# One command on a GPU host (any directory): build the kernel .so, run the GPU
# tests (kernels vs torch references, engine vs the eager model and WeNet's reference,
# fp16/bf16 accuracy report, the GPU CTC search vs the C++ one), the model-level benchmark and
# the search benchmark (benchmarks/gpu_search.py: GPU vs C++ search, n-best checked, CSV + plot).
# Everything lands in $OUT.
# Env: OUT, WENET_SHARED (the shared test assets; default ../shared), TESTS_EXTRA, BENCH_ARGS,
# WAV_DIR (wavs for the search benchmark; default synth_test under WENET_SHARED, else the
# package samples), SEARCH_SECONDS (utterance lengths for it, default "5 20"). The search's
# per-phase split (a profiling build) lands in gpu_search_phases/search_phases.csv.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SHARED=${WENET_SHARED:-../shared}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  nvcc --version | tail -1
} > "$OUT/gpu_tests.log" 2>&1
python3 -m wenet_triton.cli build-plugins >> "$OUT/gpu_tests.log" 2>&1 || { tail -30 "$OUT/gpu_tests.log"; exit 1; }
WENET_REPORT_DIR="$OUT" python3 -m pytest -q -p no:cacheprovider -s tests/test_gpu.py tests/test_gpu_search.py ${TESTS_EXTRA:-} \
  >> "$OUT/gpu_tests.log" 2>&1
echo "tests rc=$?" >> "$OUT/gpu_tests.log"
grep -E "passed|failed|error|accuracy|^conformer|^u2pp" "$OUT/gpu_tests.log" | tail -8
MODELS="aishell"
[ -d "$SHARED/models/conformer_2021" ] && MODELS="$MODELS $SHARED/models/conformer_2021"
python3 -m wenet_triton.cli bench --out "$OUT/bench" --models $MODELS ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
WAV_DIR=${WAV_DIR:-$SHARED/data/synth_test}
[ -d "$WAV_DIR" ] || WAV_DIR=$(python3 -c 'from wenet_triton.paths import SAMPLES_DIR; print(SAMPLES_DIR)')
for sec in ${SEARCH_SECONDS:-5 20}; do
  python3 benchmarks/gpu_search.py --wav-dir "$WAV_DIR" --seconds "$sec" --batches 1 8 32 64 128 \
    --out "$OUT/gpu_search_${sec}s" > "$OUT/gpu_search_${sec}s.log" 2>&1
  echo "gpu_search ${sec} s rc=$? ($(grep -c "'nbest_identical'" "$OUT/gpu_search_${sec}s.log") rows)"
done
# where a search frame's time goes (a profiling build of the kernels; benchmarks/gpu_search.py --phases)
python3 benchmarks/gpu_search.py --wav-dir "$WAV_DIR" --seconds 5 --batches 128 --phases \
  --out "$OUT/gpu_search_phases" > "$OUT/gpu_search_phases.log" 2>&1
echo "gpu_search phases rc=$? ($(grep "^phases" "$OUT/gpu_search_phases.log" | tail -1))"
python3 - "$OUT/bench/bench_speedup.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'model':16} {'engine':22} {'B':>3} {'sec':>4} {'enc p50':>9} {'dec p50':>9} {'audio s/s':>10} {'x eager32':>9}")
for r in rows:
    if r["engine"] in ("eager_fp32", "torch_cuda", "eager_fp16") or r["batch"] == "1":
        sp = f"{float(r['speedup_vs_eager_fp32']):9.1f}" if r["speedup_vs_eager_fp32"] else ""
        print(f"{r['model'][:16]:16} {r['engine']:22} {r['batch']:>3} {float(r['seconds']):4.0f} "
              f"{float(r['enc_ms_p50']):9.3f} {float(r['dec_ms_p50']):9.3f} {float(r['audio_s_per_s']):10.0f} {sp}")
PY
