#!/usr/bin/env bash
# Train the demo model on the GPU machine (issue #4), across device calls of <= 10 minutes:
#   bash docs/lab/pack_train_assets.sh            # here, once: fills .device_train/
#   device run (carry .device_train):  bash recipes/demo_zh_synth/train_demo.sh start
#   device run (same warm machine):    bash recipes/demo_zh_synth/train_demo.sh follow   # repeat
# `start` launches corpus generation and training as their own sessions (setsid), so they
# outlive the call while the machine stays warm; every call follows the log for up to
# FOLLOW_S seconds and leaves the log, the summary and the latest model (fp16, split in
# parts under the 16 MiB file limit) in $OUT. Join the parts with `cat final.pt.part-* >final.pt`.
# Env: MINUTES (training budget, default 21), TRAIN_ARGS (extra train_demo.py train flags),
#      GEN_JOBS (synthesis processes, default nproc-2), NUM_TRAIN (utterances, 0 = all
#      of the lists), NUM_DEV (default 200), TRAIN_LISTS (lists in .device_train/synth, default
#      train.txt), INIT (model dir to go on from), EVAL (1: once done, fp32 vs fp16 dev CER
#      into eval.json), FOLLOW_S (default 540), COMPOSE (compose workers: random sentences
#      assembled from per-voice word clips, default 0), COMPOSE_ARGS (extra compose flags),
#      NEW_TEXT (N: draw N new sentences with seed NEW_TEXT_SEED, default 12, as list new.txt).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
W=work/demo_train
A=.device_train
OUT=${OUT:-$W/out}
FOLLOW_S=${FOLLOW_S:-540}
mkdir -p $W "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $A/whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

if [ "${1:-follow}" = start ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  rm -rf $W/corpus $W/compose $W/run $W/eval.json
  if [ -n "${NEW_TEXT:-}" ]; then
    python3 recipes/demo_zh_synth/make_more_text.py --words $A/synth/words.txt --num "$NEW_TEXT" \
      --seed "${NEW_TEXT_SEED:-12}" --prefix new --out $A/synth/new.txt \
      --exclude $A/synth/dev.txt $A/synth/test.txt
  fi
  COMPOSE=${COMPOSE:-0}
  if [ "$COMPOSE" -gt 0 ]; then
    # shellcheck disable=SC2086  # COMPOSE_ARGS is a word list on purpose
    setsid nohup python3 recipes/demo_zh_synth/train_demo.py compose --espeak-dir "$PWD/$A/espeak" \
      --synth-dir $A/synth --out $W/compose --jobs "$COMPOSE" --minutes "${MINUTES:-21}" \
      ${COMPOSE_ARGS:-} >$W/compose.log 2>&1 </dev/null &
    TRAIN_ARGS="--composed-dir $W/compose ${TRAIN_ARGS:-}"
  fi
  # shellcheck disable=SC2086  # TRAIN_LISTS is a word list on purpose
  setsid nohup python3 recipes/demo_zh_synth/train_demo.py gen --espeak-dir "$PWD/$A/espeak" \
    --synth-dir $A/synth --out $W/corpus --num-train "${NUM_TRAIN:-0}" --num-dev "${NUM_DEV:-200}" \
    --train-list ${TRAIN_LISTS:-train.txt} --jobs "${GEN_JOBS:-$(( $(nproc) - 2 - COMPOSE ))}" \
    >$W/gen.log 2>&1 </dev/null &
  # shellcheck disable=SC2086  # TRAIN_ARGS is a word list on purpose
  setsid nohup python3 recipes/demo_zh_synth/train_demo.py train --corpus $W/corpus --out $W/run \
    --minutes "${MINUTES:-21}" ${INIT:+--init "$INIT"} ${TRAIN_ARGS:-} >$W/train.log 2>&1 </dev/null &
  sleep 5
fi

end=$(( $(date +%s) + FOLLOW_S ))
declare -A shown=([gen]=0 [train]=0 [compose]=0)
while :; do
  for f in gen compose train; do
    n=$(cat $W/$f.log 2>/dev/null | wc -l)
    [ "$n" -gt "${shown[$f]}" ] && tail -n +$((shown[$f] + 1)) $W/$f.log | head -n $((n - shown[$f])) | cut -c1-220
    shown[$f]=$n
  done
  [ -f $W/run/DONE ] && break
  pgrep -f "train_demo.py train" >/dev/null || { echo "trainer is not running"; break; }
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 10
done

if [ -f $W/run/DONE ]; then  # free the CPU cores for the evaluation
  touch $W/compose/STOP 2>/dev/null
  pkill -f "train_demo.py gen" 2>/dev/null
fi
if [ -f $W/run/DONE ] && [ -f $W/run/model/final.pt ] && [ "${EVAL:-1}" = 1 ] && [ ! -f $W/eval.json ]; then
  # fp32 eager vs the fp16 GPU engine on the dev shard (builds the kernels first)
  python3 -m wenet_triton.cli build-plugins >$W/eval.log 2>&1
  python3 recipes/demo_zh_synth/train_demo.py eval --model $W/run/model --corpus $W/corpus \
    --out $W/eval.json >>$W/eval.log 2>&1 || tail -20 $W/eval.log
  tail -3 $W/eval.log | cut -c1-400
fi
cp $W/gen.log $W/compose.log $W/train.log $W/eval.json "$OUT"/ 2>/dev/null
cp $W/run/train_log.jsonl $W/run/summary.json "$OUT"/ 2>/dev/null
src=$W/run/model; [ -f $src/final.pt ] || src=$W/run/snapshot
if [ -f $src/final.pt ]; then
  cp $src/train.yaml $src/global_cmvn "$OUT"/
  split -b 15M -d $src/final.pt "$OUT"/final.pt.part-
  echo "model from $src: $(du -h $src/final.pt | cut -f1)"
fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
[ -f $W/run/DONE ] && echo "DONE: $(cat $W/run/DONE)" || echo "still training"
