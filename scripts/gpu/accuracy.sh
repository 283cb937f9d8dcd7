#!/usr/bin/env bash
# Accuracy on the GPU machine: synth_test CER of the demo model (or $MODEL) through the fp16
# torch_cuda engine and eager PyTorch fp32 on the GPU, with the model's decoding.yaml (beam
# and LM) and without the LM (beam 10); then tests/test_gpu.py. Results (CER JSON,
# transcripts, logs) in $OUT; a table last.
# Env: MODEL (default the repo's demo model), WAVS (wavs + Kaldi `text`; default
# $WENET_SHARED/data/synth_test), OUT, TESTS=0 to skip the GPU tests.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-gpu_accuracy_out}
MODEL=${MODEL:-$root/models/demo_zh_synth}
WAVS=${WAVS:-${WENET_SHARED:-$root/../shared}/data/synth_test}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WENET_TRITON_CACHE=${WENET_TRITON_CACHE:-/tmp/wenet_triton_gpu/cache}
python3 -m wenet_triton.cli build-plugins > "$OUT/build_plugins.log" 2>&1 || { tail "$OUT/build_plugins.log"; exit 1; }
for run in "torch_cuda float16 lm" "torch float32 lm" "torch_cuda float16 nolm" "torch float32 nolm"; do
  read -r engine dtype lm <<< "$run"
  extra=(); [ "$lm" = nolm ] && extra=(--lm none --beam-size 10)
  name="${engine}_${dtype}_$lm"
  python3 -m wenet_triton.cli transcribe "$WAVS" --model "$MODEL" --ref "$WAVS/text" --engine "$engine" \
    --device cuda --dtype "$dtype" "${extra[@]}" --cer-json "$OUT/cer_$name.json" \
    > "$OUT/hyp_$name.txt" 2> "$OUT/log_$name.txt" || tail -5 "$OUT/log_$name.txt"
done
if [ "${TESTS:-1}" = 1 ]; then
  (cd "$root" && python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py) > "$OUT/test_gpu.log" 2>&1
  tail -1 "$OUT/test_gpu.log"
fi
# transcripts and logs as one archive
(cd "$OUT" && tar czf logs.tgz hyp_* log_* ./*.log && rm -f hyp_* ./*.log)
python3 - "$OUT" <<'PY'
import glob, json, os, sys
print(f"{'engine dtype lm':28} {'rescoring':>9} {'1st pass':>9} {'greedy':>7}  RTF")
for p in sorted(glob.glob(os.path.join(sys.argv[1], "cer_*.json"))):
    d = json.load(open(p))
    lp = p.replace("cer_", "log_").replace(".json", ".txt")
    log = open(lp).read() if os.path.exists(lp) else ""
    rtf = [l.split("RTF ")[1] for l in log.splitlines() if "RTF" in l]
    print(f"{os.path.basename(p)[4:-5]:28} {d['attention_rescoring']['cer']*100:9.2f} "
          f"{d['ctc_prefix_beam']['cer']*100:9.2f} {d['ctc_greedy']['cer']*100:7.2f}  {rtf[0] if rtf else ''}")
PY
rm -f "$OUT"/log_*
