#!/bin/bash
# The CUDA wheel as a user gets it, built and tested on the GPU machine (torch 2.11+cu130 in the system Python,
# nvcc 13, Python 3.12, no network):
#   1. build the wheel from this tree (no build isolation: against the system's CUDA torch; sm_ARCH);
#   2. pin its metadata to that torch's minor release (tools/pin_torch_wheel.py);
#   3. create a clean virtualenv with --system-site-packages (torch and the other dependencies come from the
#      system; nothing is downloaded) and install the wheel there;
#   4. run the CUDA tests (tests/test_cuda.py, then the CUDA cases of the op family files) from a copy of tests/
#      outside the source tree, so that `import dv365_ops` can only find the installed wheel.
# Results go to $OUT: build_cuda_wheel.txt (versions, stages, test summaries), junit_*.xml, logs.tgz, the wheel.
#   [OUT=dir] [PY=python3] [ARCH=90] [DEADLINE=570] [TEST_TIMEOUT=300] bash tools/build_cuda_wheel.sh
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$SRC/cuda-wheel-out}
PY=${PY:-python3}
ARCH=${ARCH:-90}
mkdir -p "$OUT/logs"
LOGS=$OUT/logs
REPORT=$OUT/build_cuda_wheel.txt
WORK=$(mktemp -d /tmp/dv365-cuda-wheel-XXXXXX)
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
T0=$(date +%s)
status=0
stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$REPORT"; }
# a stage's own limit, cut to what is left before DEADLINE (seconds after the start)
limit() { local left=$((${DEADLINE:-570} - ($(date +%s) - T0))); [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"; }
finish() {
  (cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
  grep -E "rc=|^python|junit|Requires-Dist" "$REPORT"
  exit $status
}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -1
  echo "commit $(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
} 2>&1 | tee -a "$REPORT"

# 1. build
cd "$SRC"
timeout "$(limit 420)" $PY -m pip wheel --no-build-isolation --no-deps -w "$WORK/dist" . \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -Cbuild-dir=build/cuda-wheel >"$LOGS/build.log" 2>&1
rc=$?
stamp "wheel build rc=$rc"
if [ $rc -ne 0 ]; then tail -40 "$LOGS/build.log" | tee -a "$REPORT"; status=1; finish; fi
WHEEL=$(ls "$WORK"/dist/dv365-*.whl)
# 2. pin torch
$PY tools/pin_torch_wheel.py "$WHEEL" 2>&1 | tee -a "$REPORT"
cp "$WHEEL" "$OUT/"

# 3. a clean virtualenv that sees the system's torch; an editable dv365 in the system would shadow the wheel
if $PY -m pip show dv365 2>/dev/null | grep -q "^Editable project location"; then
  stamp "uninstalling the system's editable dv365 (it would shadow the wheel)"
  $PY -m pip uninstall -y dv365 >>"$LOGS/build.log" 2>&1
fi
$PY -m venv --system-site-packages "$WORK/venv"
VPY=$WORK/venv/bin/python
# --system-site-packages reaches the base interpreter's packages only; where $PY is itself a virtualenv (the GPU
# image's torch lives in one), its packages are added behind the new venv's own with a .pth file
$PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  >"$($VPY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/dv365-parent-env.pth"
$VPY -m pip install --no-index --no-deps "$WHEEL" >"$LOGS/install.log" 2>&1
rc=$?
stamp "install rc=$rc"
[ $rc -ne 0 ] && { tail -20 "$LOGS/install.log" | tee -a "$REPORT"; status=1; finish; }
cp -r "$SRC/tests" "$WORK/tests"
cd "$WORK"
$VPY - <<'PYEOF' 2>&1 | tee -a "$REPORT"
import importlib.metadata as md, os, sys
import dv365_ops, dv365
from dv365_ops import _build_info
for mod in (dv365_ops, dv365):
    assert os.path.realpath(mod.__file__).startswith(os.path.realpath(sys.prefix)), f"{mod.__name__} from {mod.__file__}"
print("installed:", os.path.dirname(dv365_ops.__file__), "built against torch", _build_info.TORCH_VERSION,
      "cuda", _build_info.TORCH_CUDA)
print("Requires-Dist:", [r for r in md.requires("dv365") if "extra" not in r])
missing = []
for r in md.requires("dv365"):
    name = r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip()
    if "extra" not in r:
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
print("runtime dependencies missing on this machine:", missing or "none")
PYEOF
[ "${PIPESTATUS[0]}" -ne 0 ] && { stamp "the installed wheel does not import from the venv"; status=1; finish; }
$VPY -m dv365_ops 2>&1 | tee -a "$REPORT"

# 4. the CUDA tests against the installed wheel
run_tests() {  # name, pytest args...
  local name=$1
  shift
  local start=$(date +%s)
  timeout "$(limit ${TEST_TIMEOUT:-300})" $VPY -m pytest -q -p no:cacheprovider -o addopts="" -rfE \
    --junitxml="$OUT/junit_$name.xml" "$@" >"$LOGS/pytest_$name.log" 2>&1
  local rc=$?
  stamp "pytest $name rc=$rc in $(($(date +%s) - start)) s: $(tail -1 "$LOGS/pytest_$name.log")"
  [ $rc -ne 0 ] && status=1
}
run_tests cuda tests/test_cuda.py
run_tests families -k cuda tests/test_jagged.py tests/test_int4.py tests/test_token_pool.py tests/test_slicing.py \
  tests/test_pooling.py
finish
