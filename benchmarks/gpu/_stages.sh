# Shared by the one-call GPU scripts (run_pipeline.sh, run_train_step.sh); source it after setting OUT, MD (the
# markdown the stages append to), DEADLINE (seconds the whole call may take) and PY.
#   stamp MSG                 MSG with the seconds since the start, printed and appended to $MD
#   limit SECONDS             a stage's time limit, cut to what is left before $DEADLINE (at least 10 s)
#   header                    date, GPU, versions and commit into $MD
#   build                     the editable CUDA build (log in $LOGS/build.log); exits on failure
#   run NAME SECONDS CMD...   CMD under its limit, log in $LOGS/NAME.log, its tables and $KEEP lines (at most
#                             $KEEP_LINES, 300) into $MD
LOGS=$OUT/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
T0=$(date +%s)
KEEP=${KEEP:-"users/s|examples/s"}

stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$MD"; }

limit() {
  local left=$((DEADLINE - ($(date +%s) - T0)))
  [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}

header() {
  {
    echo '```'
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    nproc
    echo "commit ${DV365_COMMIT:-$(git rev-parse --short HEAD)}"
    echo '```'
  } >>"$MD" 2>&1
}

build() {
  $PY -m pip install --no-build-isolation --no-deps -e . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
    -Cbuild-dir=build/h200 >"$LOGS/build.log" 2>&1
  local rc=$?
  stamp "build rc=$rc"
  if [ $rc -ne 0 ]; then tail -40 "$LOGS/build.log" | tee -a "$MD"; exit 1; fi
}

run() {
  local name=$1 secs=$2
  shift 2
  timeout "$(limit "$secs")" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  stamp "$name rc=$rc"
  { echo; echo "## $name"; echo; echo '`'"$*"'`'; echo
    grep -v "^\s*$" "$LOGS/$name.log" | grep -E "^\||^#|$KEEP" | head -"${KEEP_LINES:-300}"; } >>"$MD"
}
