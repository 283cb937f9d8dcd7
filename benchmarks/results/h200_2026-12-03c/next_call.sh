# NOT EXECUTED (written at the end of session 20 for the next one). Two calls in a row on one
# machine (launch the second within ~30 s of the first's end).
#
# Call A (fresh machine; carry .device_serve_whl, see docs/lab/pack_serve_assets.sh): install.
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient; print('numpy', numpy.__version__)"
#
# Call B (same machine; carry .device_s19s: the tritonserver bundle + 6 wavs, docs/lab): the
# served fused GPU default with session 20's engine (first conv + CTC head kernels, LayerNorm
# kernels with one vector per lane) against session 19's kernels (WENET_TRITON_FUSED_CONV1=0
# WENET_TRITON_FUSED_CTC=0 and WENET_KERNELS_LIB built with -DWK_VEC_MV4), a server start each,
# perf_analyzer c448 / c512, 5 s; the served transcripts vs the CPU pipeline with the new one.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1 WENET_TRITON_SERVER_DIR=/tmp/tritonserver
python3 -c "import tritonclient" || exit 3
[ -d /tmp/tritonserver ] || tar xJf .device_s19s/tritonserver_bundle.txz -C /tmp
NVCC_FLAGS=-DWK_VEC_MV4 bash wenet_triton/csrc/build.sh kernels /tmp/mv4.so 90
R=/tmp/resB; mkdir -p $R
export WAV_DIR=.device_s19s/wavs PA_SECONDS=5 PA_BATCHES=" " PA_CONC=448:512:64
for v in new s19; do
  if [ $v = s19 ]; then export WENET_TRITON_FUSED_CONV1=0 WENET_TRITON_FUSED_CTC=0 WENET_KERNELS_LIB=/tmp/mv4.so; fi
  t0=$(date +%s)
  OUT=$R/$v SERVING_CONFIG=configs/serving_gpu.yaml timeout 150 scripts/gpu/serve.sh start 2>&1 | tail -1
  echo "$v: server ready after $(( $(date +%s) - t0 )) s"
  OUT=$R/$v timeout 110 scripts/gpu/serve.sh pa 2>&1 | grep -E "Concurrency:|front|perf_analyzer |stubs|tritonserver "
  [ $v = new ] && OUT=$R/$v timeout 80 scripts/gpu/serve.sh accuracy 2>&1 | tail -3
  OUT=$R/$v scripts/gpu/serve.sh stop > /dev/null 2>&1
done
tar czf $OUT/servedB.tgz -C $R .
#
# Kernel work waiting for a GPU (each needs its own A/B): glu_dwconv_pair at 64 x 20 s runs
# ~1 TB/s (52 us for ~50 MB; 91 registers at TT 16); the fused CTC head for few frames (split
# the vocabulary over programs as triton_vocab does); FP8's input quantization fused into the
# LayerNorm kernel before each FFN (the quantization pass is part of why FP8 lost).
