#!/usr/bin/env bash
# The demo model's LM (models/demo_zh_synth/lm.arpa.gz): a character 5-gram over 2 000 000
# sentences drawn like ../shared/synth's text lists (make_more_text.py; the dev and test
# sentences are left out), pruned to n-grams seen >= 6 times (orders 2-5). ~3 min, 8 GB RAM.
#   WORDS=.device_train/synth/words.txt bash recipes/demo_zh_synth/make_demo_lm.sh
# (words.txt: the word list with weights, from docs/lab/pack_train_assets.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
WORDS=${WORDS:-.device_train/synth/words.txt}
OUT=${OUT:-models/demo_zh_synth/lm.arpa.gz}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python recipes/demo_zh_synth/make_more_text.py --words "$WORDS" --num 2000000 --seed 1001 --prefix lm \
    --exclude ../shared/synth/dev.txt ../shared/synth/test.txt --out "$TMP/lm_text.txt"
wenet-triton lm --model models/demo_zh_synth --text "$TMP/lm_text.txt" --with-ids \
    --order 5 --min-count 1,6,6,6,6 --out "$OUT"
