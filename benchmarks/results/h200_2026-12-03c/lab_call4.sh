# session 20, call 4 (call 3's warm machine): the FP8 CER on the GPU (demo model, synth_test:
# calibrate on 20, score 80, fp16 vs fp8, transcripts kept), WeNet v2.2.1's own eager code on the
# AISHELL shape (the same-run anchor for the model-level numbers), a profile of the new default
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
[ -f /tmp/s20_installed ] || { python3 -m pip install -q --no-index --no-deps .device_fp8/*.whl > /dev/null 2>&1; python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1; python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1; touch /tmp/s20_installed; }
timeout 170 python3 -m benchmarks.fp8_cer --engine torch_cuda --wavs .device_fp8/synth_test --out $OUT/fp8_cer_gpu.csv --hyps-dir $OUT 2>&1 | tail -3
echo "cer $(( $(date +%s) - t0 )) s"
WENET_SRC=.device_fp8/peer timeout 150 python3 .device_fp8/peer/peer_wenet_gpu.py > $OUT/peer.jsonl 2> /tmp/peer.err || tail -3 /tmp/peer.err
echo "peer $(( $(date +%s) - t0 )) s"
PYTHONPATH=. timeout 60 python3 benchmarks/profile_gpu.py --batch 64 --seconds 20 > $OUT/profile_64x20.txt 2>&1
grep -A14 "encoder kernels" $OUT/profile_64x20.txt | cut -c1-60,150-175
echo "done $(( $(date +%s) - t0 )) s"
