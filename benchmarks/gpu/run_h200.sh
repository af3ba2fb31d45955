#!/bin/bash
# The whole GPU check in one command: versions, build, the test suite on CUDA (native and Triton backends;
# one pytest process per test file, so that a crashing test loses only its file's results),
# compute-sanitizer memcheck and racecheck over every CUDA kernel, the benchmark. Logs go to $OUT (or ./gpu-out).
#   DV365_COMMIT=$(git rev-parse HEAD) STAGES="build test sanitize bench" TEST_ARGS="tests" \
#     [BACKENDS="native triton"] [PYTEST_K=expr] bash benchmarks/gpu/run_h200.sh
# The device tool returns at most 8 files from $OUT: PACK=1 (default) leaves versions.txt, bench.md,
# bench.json and one logs.tgz with everything else (PACK=0 for all but the last of several invocations).
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
STAGES=${STAGES:-"build test sanitize bench"}
TEST_ARGS=${TEST_ARGS:-tests}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
PY=${PY:-python3}
status=0
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  $PY -c 'import triton; print("triton", triton.__version__)'
  nvcc --version | tail -2
  compute-sanitizer --version | head -2
  if [ -n "${DV365_COMMIT:-}" ]; then echo "commit $DV365_COMMIT"; else echo "commit $(git rev-parse HEAD) (the device copy of .git: may be stale)"; fi
} 2>&1 | tee -a "$OUT/versions.txt"

if [[ " $STAGES " == *" build "* ]]; then
  start=$(date +%s)
  $PY -m pip install --no-build-isolation --no-deps -e . \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Cbuild-dir=build/h200 >/tmp/dv365_build.log 2>&1
  rc=$?
  echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/versions.txt"
  grep -E "error|warning" /tmp/dv365_build.log | grep -v "^ *$" | head -40 >>"$OUT/versions.txt"
  if [ $rc -ne 0 ]; then tail -60 /tmp/dv365_build.log | tee -a "$OUT/versions.txt"; exit 1; fi
  $PY -m dv365_ops 2>&1 | tee -a "$OUT/versions.txt"
fi

if [[ " $STAGES " == *" test "* ]]; then
  # one pytest process per test file: a test that crashes the process loses only its own file's results
  files=$(for a in $TEST_ARGS; do if [ -d "$a" ]; then ls "$a"/test_*.py; else echo "$a"; fi; done)
  for backend in ${BACKENDS:-native triton}; do
    start=$(date +%s)
    rm -f /tmp/dv365_junit_${backend}_*.xml
    : >"$OUT/pytest_$backend.log"
    i=0
    for f in $files; do
      i=$((i + 1))
      DV365_BACKEND=$backend timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE \
        ${PYTEST_TIMEOUT_ARGS---timeout 600} ${PYTEST_K:+-k "$PYTEST_K"} --junitxml="/tmp/dv365_junit_${backend}_$i.xml" "$f" >/tmp/dv365_pytest.log 2>&1
      rc=$?
      { echo "== $f (rc=$rc)"; cat /tmp/dv365_pytest.log; } >>"$OUT/pytest_$backend.log"
      echo "pytest $backend $f rc=$rc: $(tail -1 /tmp/dv365_pytest.log)" | tee -a "$OUT/versions.txt"
      [ $rc -ne 0 ] && status=1
    done
    $PY - "$OUT/junit_$backend.xml" /tmp/dv365_junit_${backend}_*.xml <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.Element("testsuites")
for path in sys.argv[2:]:
    try:
        tree = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue
    root.extend(tree.iter("testsuite"))
ET.ElementTree(root).write(sys.argv[1])
PYEOF
    echo "pytest ($backend backend) done in $(( $(date +%s) - start )) s" | tee -a "$OUT/versions.txt"
  done
fi

if [[ " $STAGES " == *" sanitize "* ]]; then
  for tool in memcheck racecheck; do
    start=$(date +%s)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${SAN_TIMEOUT:-240} compute-sanitizer --tool $tool --error-exitcode 17 \
      $PY benchmarks/gpu/sanitize.py >/tmp/dv365_$tool.log 2>&1
    rc=$?
    { echo "== compute-sanitizer --tool $tool: rc=$rc"; head -c 2000000 /tmp/dv365_$tool.log; } >>"$OUT/sanitizer.log"
    echo "compute-sanitizer $tool rc=$rc in $(( $(date +%s) - start )) s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' /tmp/dv365_$tool.log | tail -1)" | tee -a "$OUT/versions.txt"
    [ $rc -ne 0 ] && { tail -30 /tmp/dv365_$tool.log; status=1; }
  done
fi

if [[ " $STAGES " == *" bench "* ]]; then
  timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/gpu/bench_gpu.py --out /tmp/dv365_bench ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
  rc=$?
  cp /tmp/dv365_bench/bench.json "$OUT/" 2>/dev/null
  echo "bench rc=$rc" | tee -a "$OUT/versions.txt"
  tail -45 "$OUT/bench.log"
  [ $rc -ne 0 ] && status=1
fi
cat "$OUT/versions.txt" | grep -E "rc=|^python|^triton|NVIDIA"
if [ "${PACK:-1}" = 1 ]; then
  pack=$(mktemp -d)
  (cd "$OUT" && tar czf "$pack/logs.tgz" --exclude=./versions.txt --exclude=./bench.md --exclude=./bench.json . &&
     find . -mindepth 1 -maxdepth 1 ! -name versions.txt ! -name bench.md ! -name bench.json -exec rm -rf {} + &&
     mv "$pack/logs.tgz" .)
  rm -rf "$pack"
fi
exit $status
