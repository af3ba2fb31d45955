#!/bin/bash
# The whole GPU check in one command: versions, build, the benchmark (first, on a quiet GPU), then the test suite
# on CUDA for both implementations side by side with compute-sanitizer memcheck and racecheck over every CUDA
# kernel. Results and logs go to $OUT (or ./gpu-out); every stage is stamped with its wall time.
#   DV365_COMMIT=$(git rev-parse HEAD) [STAGES="build bench test sanitize"] [JOBS=8] [DEADLINE=570] \
#     bash benchmarks/gpu/run_h200.sh
# (STAGES="build bench_sliced test sanitize bench_rest": the W40K benchmark first, the other ops' last)
# Tests: one pytest process per job, JOBS at a time (a crash loses only its job). The native jobs are every test
# file (test_cuda.py in five parts); the Triton jobs run the family files' CUDA tests with DV365_BACKEND=triton
# (the wrappers and their autograd then call the Triton ops; test_triton.py calls them directly in the native set).
# The device tool returns at most 8 files from $OUT: PACK=1 (default) leaves versions.txt, bench.md, bench.json,
# junit_native.xml, junit_triton.xml, rest/bench.{md,json} and one logs.tgz.
# WHEELS=<folder of wheels> installs them into $PY first (no index: the GPU machine has no network), e.g. lmdb, which
# the store tests need and the device image lacks.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT/logs"
LOGS=$OUT/logs
STAGES=${STAGES:-"build bench test sanitize"}
JOBS=${JOBS:-8}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
PY=${PY:-python3}
T0=$(date +%s)
status=0
stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/versions.txt"; }
# seconds a stage may take: its own limit, cut to what is left before DEADLINE (seconds after the start; the device
# tool stops a command at 600 s, and what the stages wrote must still be packed)
limit() { local left=$((${DEADLINE:-570} - ($(date +%s) - T0))); [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"; }
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  $PY -c 'import triton; print("triton", triton.__version__)'
  nvcc --version | tail -2
  compute-sanitizer --version | head -2
  if [ -n "${DV365_COMMIT:-}" ]; then echo "commit $DV365_COMMIT"; else echo "commit $(git rev-parse HEAD) (the device copy of .git: may be stale)"; fi
} 2>&1 | tee -a "$OUT/versions.txt"

if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-deps --no-index "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$OUT/versions.txt"
fi
$PY -c 'import lmdb; print("lmdb", lmdb.__version__)' 2>&1 | tail -1 | tee -a "$OUT/versions.txt"

if [[ " $STAGES " == *" build "* ]]; then
  $PY -m pip install --no-build-isolation --no-deps -e . \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Cbuild-dir=build/h200 >"$LOGS/build.log" 2>&1
  rc=$?
  stamp "build rc=$rc"
  grep -E "error|warning" "$LOGS/build.log" | grep -v "^ *$" | head -40 >>"$OUT/versions.txt"
  if [ $rc -ne 0 ]; then tail -60 "$LOGS/build.log" | tee -a "$OUT/versions.txt"; exit 1; fi
  $PY -m dv365_ops 2>&1 | tee -a "$OUT/versions.txt"
fi

# the benchmark: all of it (stage bench), or its W40K part first and the other ops after the tests
# (stages bench_sliced ... bench_rest, the latter's tables under $OUT/rest/)
bench() {  # name, out dir, args...
  local name=$1 out=$2
  shift 2
  timeout "$(limit ${BENCH_TIMEOUT:-300})" $PY benchmarks/gpu/bench_gpu.py --out "$out" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  stamp "$name rc=$rc"
  [ $rc -ne 0 ] && { tail -30 "$LOGS/$name.log"; status=1; }
}
[[ " $STAGES " == *" bench "* ]] && bench bench "$OUT"
[[ " $STAGES " == *" bench_sliced "* ]] && bench bench_sliced "$OUT" --ops sliced

sanitizer_pids=()
if [[ " $STAGES " == *" sanitize "* ]]; then
  for tool in memcheck racecheck; do
    (
      start=$(date +%s)
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(limit ${SAN_TIMEOUT:-300})" compute-sanitizer --tool $tool --error-exitcode 17 \
        $PY benchmarks/gpu/sanitize.py >"$LOGS/sanitizer_$tool.log" 2>&1
      rc=$?
      stamp "compute-sanitizer $tool rc=$rc in $(($(date +%s) - start)) s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/sanitizer_$tool.log" | tail -1)"
      exit $rc
    ) &
    sanitizer_pids+=($!)
  done
fi

if [[ " $STAGES " == *" test "* ]]; then
  cuda_parts=("jagged or token" "int4 and not (jagged or token)" "grouped_windows" "kernel_variants"
              "not (jagged or token or int4 or grouped_windows or kernel_variants)")
  jobfile=$(mktemp)
  i=0
  for part in "${cuda_parts[@]}"; do
    i=$((i + 1)); printf 'native\tcuda%d\ttests/test_cuda.py\t%s\n' $i "$part" >>"$jobfile"
  done
  for f in tests/test_*.py; do
    [ "$f" = tests/test_cuda.py ] && continue
    printf 'native\t%s\t%s\t\n' "$(basename "$f" .py)" "$f" >>"$jobfile"
  done
  for f in tests/test_jagged.py tests/test_int4.py tests/test_slicing.py tests/test_pooling.py; do
    printf 'triton\t%s\t%s\tcuda\n' "$(basename "$f" .py)" "$f" >>"$jobfile"
  done
  run_job() {
    IFS=$'\t' read -r backend name file k <<<"$1"
    local log="$LOGS/pytest_${backend}_$name.log"
    local start=$(date +%s)
    # the native jobs run the default backend (auto: the compiled kernels, chosen the way users get them)
    DV365_BACKEND=${backend/native/auto} timeout "$(limit ${TEST_TIMEOUT:-300})" $PY -m pytest -q -p no:cacheprovider -o addopts="" -rfE \
      ${k:+-k "$k"} --junitxml="$LOGS/junit_${backend}_$name.xml" "$file" >"$log" 2>&1
    local rc=$?
    echo "[$(($(date +%s) - T0)) s] pytest $backend $name rc=$rc in $(($(date +%s) - start)) s: $(tail -1 "$log")" >>"$OUT/versions.txt"
    return $rc
  }
  export -f run_job limit
  export PY OUT LOGS T0 DEADLINE
  tr '\n' '\0' <"$jobfile" | xargs -0 -P "$JOBS" -I{} bash -c 'run_job "$1"' _ {} || status=1
  rm -f "$jobfile"
  for backend in native triton; do
    $PY - "$OUT/junit_$backend.xml" "$LOGS"/junit_${backend}_*.xml <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.Element("testsuites")
totals = dict(tests=0, failures=0, errors=0, skipped=0)
for path in sys.argv[2:]:
    try:
        tree = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue
    for suite in tree.iter("testsuite"):
        root.append(suite)
        for k in totals:
            totals[k] += int(suite.get(k, 0))
ET.ElementTree(root).write(sys.argv[1])
print(sys.argv[1].rsplit("/", 1)[-1], totals)
PYEOF
  done 2>&1 | tee -a "$OUT/versions.txt"
  stamp "tests done"
fi

for pid in "${sanitizer_pids[@]}"; do
  wait "$pid" || status=1
done
[[ " $STAGES " == *" bench_rest "* ]] && bench bench_rest "$OUT/rest" --ops jagged,token,int4
grep -E "rc=|^python|^triton|NVIDIA|junit" "$OUT/versions.txt"
[ -f "$OUT/bench.md" ] && grep -E "sliced_pool fwd \| W40K B=32 float32 \| dv365 cuda" "$OUT/bench.md"
if [ "${PACK:-1}" = 1 ]; then
  (cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
fi
exit $status
