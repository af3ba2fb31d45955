#!/bin/bash
# The pipeline on the GPU machine in one command: build, then at W40K size (dv365 synth defaults: users of 10k-70k
# events, 1M / 200K / 10K ids, D = 256, the default spec, FSA) a training step stage by stage (bench_train), the
# towers (bench_towers), the loader (bench_loader), the export (bench_export), and the model / train / metrics
# tests on CUDA. Results to $OUT (at most 8 files come back: pipeline.md, *.json, logs.tgz).
#   DV365_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu/run_pipeline.sh
# Extra Python wheels the image lacks (lmdb, xxhash for the store) are installed from .whl/ when present.
set -u
OUT=${OUT:-$PWD/gpu-out}
LOGS=$OUT/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
PY=${PY:-python3}
T0=$(date +%s)
DEADLINE=${DEADLINE:-560}
MD=$OUT/pipeline.md
stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$MD"; }
limit() { local left=$((DEADLINE - ($(date +%s) - T0))); [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  echo '```'
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  nproc
  echo "commit ${DV365_COMMIT:-$(git rev-parse --short HEAD)}"
  echo '```'
} >>"$MD" 2>&1

$PY -m pip install --no-build-isolation --no-deps -e . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  -Cbuild-dir=build/h200 >"$LOGS/build.log" 2>&1
rc=$?
stamp "build rc=$rc"
if [ $rc -ne 0 ]; then tail -40 "$LOGS/build.log" | tee -a "$MD"; exit 1; fi

DATA=/tmp/w40k
timeout "$(limit 120)" $PY -m dv365.cli synth --users ${USERS:-192} --out $DATA --seed 0 >"$LOGS/synth.log" 2>&1
stamp "synth rc=$? $(tail -1 "$LOGS/synth.log")"

run() {  # name, seconds, command...
  local name=$1 secs=$2
  shift 2
  timeout "$(limit "$secs")" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  stamp "$name rc=$rc"
  { echo; echo "## $name"; echo; echo '`'"$*"'`'; echo; grep -v "^\s*$" "$LOGS/$name.log" | grep -E "^\||^#|users/s|examples/s" | head -60; } >>"$MD"
}
run train_step 150 $PY benchmarks/bench_train.py --w40k --data $DATA --steps 10 --out "$OUT/train_w40k.json"
run export 150 $PY benchmarks/bench_export.py --device cuda --users 512 --repeats 1 --dir /tmp/export-work --out "$OUT/export_w40k.json"
run loader 120 $PY benchmarks/bench_loader.py --dir $DATA --workers 1,8,16 --seconds 3 --out "$OUT/loader_w40k.json"
run towers 60 $PY benchmarks/bench_towers.py --bf16 --json "$OUT/towers.json"
run train_step_compiled 120 $PY benchmarks/bench_train.py --w40k --data $DATA --steps 10 --compile --out "$OUT/train_w40k_compiled.json"
run tests_cuda 90 $PY -m pytest -q -x tests/test_models.py tests/test_metrics.py -k "cuda or bf16 or compile"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
stamp done
