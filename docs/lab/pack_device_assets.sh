#!/usr/bin/env bash
# Pack what the GPU machine lacks into .device/ (git-ignored, carried with the device tool):
# wheels for Python 3.12 and, with REFERENCE_MODEL=1, conformer_2021 + 10 of WeNet's reference
# outputs for the GPU-vs-WeNet test. That model is 50 MB: with the 22 MB demo model in the tree
# it no longer fits the 64 MiB carry, so by default the GPU run checks the engine against the
# eager model (itself checked against WeNet in CI) and that test skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.device
rm -rf $D
mkdir -p $D/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d $D/whl kaldi-native-fbank==1.23.0 soundfile==0.14.0
[ "${REFERENCE_MODEL:-0}" = 1 ] || { du -sh $D; exit 0; }
mkdir -p $D/shared/models $D/shared/reference/conformer_2021
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
