# install call: numpy 1.26 etc. into the machine's python, soundfile, editable install, kernels
set -x
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl .device/whl/soundfile*.whl 2>&1 | tail -3
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -c "import numpy, tritonclient, kaldi_native_fbank, soundfile; print('numpy', numpy.__version__)"
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -3
nproc; nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv
