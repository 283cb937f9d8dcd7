# session 19, call 3 (fresh machine): install only, for call 4 on the same machine; carry .device_serve_whl
export WENET_TRITON_CACHE=/tmp/wtc
python3 -m pip install -q --no-index --no-deps .device_serve_whl/*.whl > /dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1
python3 -m wenet_triton.cli build-plugins 2>&1 | tail -1
python3 -c "import numpy, tritonclient; print('numpy', numpy.__version__)"
