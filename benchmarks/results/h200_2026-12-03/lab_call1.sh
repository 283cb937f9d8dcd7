# session 18, call 1 (fresh machine): install only (numpy 1.26, perf_analyzer, tritonclient,
# kaldi-native-fbank; editable install; kernels) for call 2 on the same machine; carry .device_serve_whl
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient; print('numpy', numpy.__version__)"
nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket"
