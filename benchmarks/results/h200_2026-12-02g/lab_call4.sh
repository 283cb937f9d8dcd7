# session 17, call 4 (fresh machine): install only (numpy 1.26, perf_analyzer, tritonclient, kaldi,
# soundfile; editable install; kernels), for call 5 on the same machine
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_s17w/*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient; print('numpy', numpy.__version__)"
