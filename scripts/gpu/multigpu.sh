#!/usr/bin/env bash
# 1 GPU vs several GPUs of one host, in one run (docs/multigpu.md). For each GPU set:
# scripts/gpu/serve.sh start accuracy pa stop with GPUS=<set> (torch_cuda engine,
# configs/serving_gpu.yaml: the `fused` instances on each GPU), perf_analyzer at 5 s
# over a concurrency sweep; then the best throughput of each set side by side, the speedup
# of the last set over the first (TARGET, 1.9x for 2 GPUs) and served vs CPU-pipeline transcripts
# (must be all identical). Exit 1 when a check fails. Results in $OUT/gpus_<set>/ + summary.txt.
#
#   scripts/gpu/multigpu.sh                     # GPU_SETS="0 0,1"
#   GPU_SETS="0 0,1,2,3" TARGET=3.6 scripts/gpu/multigpu.sh
#
# Env: GPU_SETS, TARGET, OUT (multigpu_out), WAV_DIR (default: the first 30 utterances of
# ../shared/data/synth_test with their text), PA_CONC (64:512:64), and serve.sh's (MODEL,
# SERVING_CONFIG, SERVE_ARGS, WORK, GRPC_PORT, ...).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${OUT:-multigpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
read -r -a sets <<< "${GPU_SETS:-0 0,1}"
if [ -z "${WAV_DIR:-}" ]; then
  WAV_DIR=$OUT/wavs30
  python3 - "$root/../shared/data/synth_test" "$WAV_DIR" 30 <<'PY' || exit 1
import os, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
utts = sorted(f[:-4] for f in os.listdir(src) if f.endswith(".wav"))[:n]
for u in utts:
    if not os.path.exists(os.path.join(dst, u + ".wav")):
        os.symlink(os.path.join(os.path.abspath(src), u + ".wav"), os.path.join(dst, u + ".wav"))
text = dict(line.rstrip("\n").split(maxsplit=1) for line in open(os.path.join(src, "text")) if line.strip())
with open(os.path.join(dst, "text"), "w") as f:
    f.writelines(f"{u} {text[u]}\n" for u in utts)
print(f"{len(utts)} utterances in {dst}")
PY
fi
WAV_DIR=$(cd "$WAV_DIR" && pwd)
for g in "${sets[@]}"; do
  echo "=== GPUs $g"
  GPUS=$g WAV_DIR=$WAV_DIR OUT="$OUT/gpus_${g//,/_}" PA_SECONDS=5 PA_CONC=${PA_CONC:-64:512:64} \
    PA_BATCHES=1 "$here/serve.sh" start accuracy pa stop
done
python3 - "$OUT" "${TARGET:-1.9}" "${sets[@]}" <<'PY' | tee "$OUT/summary.txt"
import csv, os, sys
out, target, sets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
ok, best, rows = True, {}, {}
for g in sets:
    d = os.path.join(out, "gpus_" + g.replace(",", "_"))
    try:
        rows[g] = {int(r["Concurrency"]): (float(r["Inferences/Second"]), float(r["p99 latency"]) / 1e3)
                   for r in csv.DictReader(open(os.path.join(d, "perf_analyzer_5s.csv")))}
        best[g] = max(v[0] for v in rows[g].values())
    except (OSError, KeyError, ValueError) as e:
        print(f"GPUs {g}: no perf_analyzer result ({e})")
        ok = False
    read = lambda f: dict(l.rstrip("\n").split("\t", 1) for l in open(os.path.join(d, f)) if "\t" in l)
    try:
        served, cpu = read("served.txt"), read("cpu_onnxruntime.txt")
        same = sum(served.get(k) == v for k, v in cpu.items())
        print(f"GPUs {g}: {same}/{len(cpu)} served transcripts identical to the CPU pipeline")
        ok &= bool(cpu) and same == len(cpu)
    except OSError as e:
        print(f"GPUs {g}: no accuracy result ({e})")
        ok = False
concs = sorted({c for r in rows.values() for c in r})
print("concurrency " + "".join(f"| {'GPUs ' + g + ' infer/s':>22} {'p99 ms':>8} " for g in rows))
for c in concs:
    print(f"{c:>11} " + "".join(f"| {r[c][0]:>22.1f} {r[c][1]:>8.1f} " if c in r else "| " + " " * 32
                                   for r in rows.values()))
if sets[0] in best:
    for g in sets[1:]:
        if g in best:
            ratio = best[g] / best[sets[0]]
            goal = f" (target >= {target}x)" if g == sets[-1] else ""
            print(f"best throughput: GPUs {g} {best[g]:.1f} infer/s vs GPUs {sets[0]} "
                  f"{best[sets[0]]:.1f}: {ratio:.2f}x{goal}")
            ok &= g != sets[-1] or ratio >= target
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
