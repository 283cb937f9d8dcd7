#!/usr/bin/env bash
# The one build definition of the native code, used by `wenet-triton build-plugins`, by the
# C++ search's first-use compile (wenet_triton/decode/native.py) and by Dockerfile.triton.
#   build.sh search  OUT.so            C++ CTC prefix beam search (any C++17 compiler; $CXX)
#   build.sh kernels OUT.so [ARCH...]  CUDA kernels for the torch_cuda engine (nvcc; $NVCC)
#   build.sh trt     OUT.so [ARCH...]  TensorRT plugins around the same kernels (nvcc + libnvinfer)
# ARCH: SM versions such as 90 80 (default 80 86 89 90). Writes OUT atomically. NVCC_FLAGS:
# extra nvcc flags for `kernels` (e.g. -DWKS_PHASE_TIMES, the search's phase profile).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: build.sh search|kernels|trt OUT.so [ARCH...]}
out=${2:?usage: build.sh search|kernels|trt OUT.so [ARCH...]}
shift 2
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(80 86 89 90)
gencode=()
for a in "${archs[@]}"; do gencode+=("-gencode=arch=compute_${a},code=sm_${a}"); done
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$(dirname "$out")/.build.XXXXXX.so")
trap 'rm -f "$tmp"' EXIT
case "$target" in
  search)
    "${CXX:-g++}" -O2 -std=c++17 -shared -fPIC -o "$tmp" "$here/ctc_prefix_beam_search.cpp" ;;
  kernels)
    # shellcheck disable=SC2086  # NVCC_FLAGS: extra flags, e.g. -DWKS_PHASE_TIMES (profiling)
    "${NVCC:-nvcc}" -O3 -std=c++17 -Xcompiler -fPIC -shared -I"$here" -o "$tmp" ${NVCC_FLAGS:-} \
      "$here/wenet_kernels.cu" "$here/ctc_search_gpu.cu" "${gencode[@]}" ;;
  trt)
    "${NVCC:-nvcc}" -O3 -std=c++17 -Xcompiler -fPIC -shared -I"$here" -o "$tmp" \
      "$here/wenet_kernels.cu" "$here/wenet_trt_plugins.cpp" -lnvinfer "${gencode[@]}" ;;
  *) echo "build.sh: unknown target '$target' (search, kernels, trt)" >&2; exit 2 ;;
esac
mv -f "$tmp" "$out"
trap - EXIT
echo "$out"
