# session 23, call C (fresh machine; carry .device_serve_whl .device_spare = python-rapidjson,
# which tritonclient.grpc imports and which no longer fits beside the tree in .device_serve_whl):
# install for call D within 30 s.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl .device_spare/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient.grpc, kaldi_native_fbank; print('numpy', numpy.__version__)" && touch /tmp/s23_installed
echo "install $(( $(date +%s) - t0 )) s"
