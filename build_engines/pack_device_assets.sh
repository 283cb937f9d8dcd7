#!/usr/bin/env bash
# Pack what the GPU machine lacks into .device/ (git-ignored, carried with the device tool):
# wheels for Python 3.12 and a subset of ../shared (the whole of it exceeds the 64 MiB carry).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.device
mkdir -p $D/whl $D/shared/models $D/shared/reference/conformer_2021
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $D/whl kaldi-native-fbank==1.23.0 soundfile==0.14.0
cp -r ../shared/models/conformer_2021 $D/shared/models/
python3 - <<'PY'
import json, numpy as np
src, dst = "../shared/reference/conformer_2021", ".device/shared/reference/conformer_2021"
d = json.load(open(f"{src}/decode.json"))
keep = sorted(d["utts"])[:10]
d["utts"] = {u: d["utts"][u] for u in keep}
json.dump(d, open(f"{dst}/decode.json", "w"))
for u in keep:
    r = np.load(f"{src}/{u}.npz")
    np.savez(f"{dst}/{u}.npz", **{k: r[k] for k in r.files if k != "ctc_log_probs"})
PY
du -sh $D
