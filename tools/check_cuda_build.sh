#!/bin/bash
# Compiles the CUDA sources on a machine whose torch has no CUDA (this one), to catch compile errors before
# spending GPU time: the kernel files (csrc/cuda/**.cu, no ATen) and device headers (*.cuh, each compiled alone, so
# every header includes what it uses) with nvcc, the host files (csrc/cuda/**.cpp) with the C++ compiler against torch's headers (the CPU wheel ships the c10/cuda headers but not the one
# generated file stubbed below). Nothing is linked; the real build runs on the GPU machine.
#   tools/check_cuda_build.sh [files...]     (default: every csrc/cuda source and device header)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH=$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
CUDA_HOME=${CUDA_HOME:-$(for d in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc)")")"; do [ -f "$d/include/cuda_runtime.h" ] && echo "$d" && break; done)}
STUB=$(mktemp -d)
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$STUB/c10/cuda/impl/cuda_cmake_macros.h"
files=("$@")
shopt -s nullglob
[ ${#files[@]} -eq 0 ] && files=(csrc/cuda/*.cu csrc/cuda/*/*.cu csrc/cuda/*.cuh csrc/cuda/*/*.cuh csrc/cuda/*.cpp
                                 csrc/cuda/*/*.cpp)
status=0
for f in "${files[@]}"; do
  case "$f" in
    *.cu) cmd=(nvcc -std=c++20 -arch=sm_90 --expt-relaxed-constexpr -Xptxas -warn-spills -c "$f" -o /dev/null -I csrc) ;;
    *.cuh) printf '#include "%s"\n' "$PWD/$f" >"$STUB/header.cu"  # 177: a constant the header alone does not use
           cmd=(nvcc -std=c++20 -arch=sm_90 --expt-relaxed-constexpr -diag-suppress 177 -c "$STUB/header.cu" -o /dev/null
                -I csrc) ;;
    *.cpp) cmd=(g++ -std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -DDV365_WITH_CUDA
                -DTORCH_ASSERT_ONLY_METHOD_OPERATORS "$f" -I csrc -I "$STUB" -I "$TORCH/include"
                -I "$TORCH/include/torch/csrc/api/include" -I "$PYINC" -I "$CUDA_HOME/include") ;;
    *) continue ;;
  esac
  if "${cmd[@]}"; then echo "ok   $f"; else echo "FAIL $f"; status=1; fi
done
exit $status
