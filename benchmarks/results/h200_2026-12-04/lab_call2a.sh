# session 22, call 2a: call 1's machine was handed back before call 2 (idle > 30 s), so a fresh
# one is set up again (carry .device_serve_whl) for call 2 (lab_call2.sh) within 30 s.
export WENET_TRITON_CACHE=/tmp/wtc PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient, kaldi_native_fbank; print('numpy', numpy.__version__)" && touch /tmp/s22_installed
echo "install $(( $(date +%s) - t0 )) s"
