#!/usr/bin/env bash
# .device_serve/ for scripts/gpu/serve.sh: a trimmed tritonserver bundle from the
# nvidia-pytriton wheel (binary, python backend, the Python 3.12 stub, only the libraries
# they load; xz), wheels the GPU image lacks or has in a version the stub cannot use
# (numpy 1.26: Triton 24.10's python-backend stub loses numpy-2 outputs; locust), and 30
# test wavs with their text.
# Three folders, since the tree (with the 22 MB demo model and its 8 MB LM) plus any two
# would pass the 64 MiB carry: .device_serve_whl/ (numpy, tritonclient, perf_analyzer, ...) and .device_serve_whl_locust/
# (locust and its stack, only for the locust step), each installed with pip on the
# warm machine, and .device_serve/ (33 MB: bundle + wavs, for the run itself).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.device_serve; DW=.device_serve_whl; DL=.device_serve_whl_locust; W=$(mktemp -d)
rm -rf $D $DW $DL; mkdir -p $DW $DL $D/wavs
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
for plat in manylinux_2_39_x86_64 manylinux_2_38_x86_64 manylinux_2_35_x86_64 manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do P="$P --platform $plat"; done
python3 -m pip download -q $P -d $W nvidia-pytriton==0.7.0
python3 -m pip download -q $P -d $DW perf-analyzer==2.60.0 tritonclient==2.73.0 python-rapidjson kaldi-native-fbank==1.23.0 numpy==1.26.4
# locust and its dependencies (not pytest's, which the machine has)
python3 -m pip download -q ${P/--no-deps/} --platform any -d $W/locust locust==2.47.0
find $W/locust \( -name 'pytest-*' -o -name 'pluggy-*' -o -name 'iniconfig-*' -o -name 'pygments-*' -o -name 'packaging-*' \) -delete
mv $W/locust/*.whl $DL/
(cd $W && unzip -q nvidia_pytriton-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*')
T=$W/bundle/tritonserver; mkdir -p $T/python_backend_stubs $T/libs
cp -r $W/pytriton/tritonserver/bin $W/pytriton/tritonserver/backends $T/
cp -r $W/pytriton/tritonserver/python_backend_stubs/3.12 $T/python_backend_stubs/
chmod +x $T/bin/tritonserver $T/python_backend_stubs/3.12/triton_python_backend_stub
for f in $T/bin/tritonserver $T/backends/python/libtriton_python.so $T/python_backend_stubs/3.12/triton_python_backend_stub; do
  LD_LIBRARY_PATH=$W/nvidia_pytriton.libs ldd $f | grep -o "nvidia_pytriton.libs/[^ ]*" || true
done | sort -u | while read -r lib; do cp "$W/$lib" $T/libs/; done
tar cJf $D/tritonserver_bundle.txz -C $W/bundle tritonserver
cp ../shared/data/synth_test/test_0000[0-2][0-9].wav $D/wavs/  # 30 wavs + their reference text
grep -E '^test_0000[0-2][0-9]\s' ../shared/data/synth_test/text > $D/text
rm -rf $W; du -sh $D $DW $DL
