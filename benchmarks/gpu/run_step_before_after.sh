#!/bin/bash
# The W40K training step and the sliced_pool ops of an older tree against this one, on one GPU in one call. Both
# trees are built at once, each into its own --target folder (an editable install would shadow PYTHONPATH), and the
# ops timed on one saved W40K workload, each build twice, interleaved: run_before_after.sh. Then every stage runs
# from /tmp with PYTHONPATH naming its build, so nothing imports the source tree: bench_train on `dv365 synth` W40K
# data (32 examples, D = 256, FSA, bf16, the head as CUDA graphs), before then after (after with --profile 3);
# then this tree's CUDA tests (TEST_FILES), the knob variants of test_cuda.py, memcheck and racecheck of
# sanitize.py, as long as DEADLINE (560 s) allows. Results to $OUT: step_before_after.md,
# before_after.md, *.json, logs.tgz.
#   BEFORE=<older tree> DV365_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu/run_step_before_after.sh
# SKIP_BUILD=1 (a warm machine's builds), SKIP_OPS=1 skip those stages.
# (make the older tree with `git archive <commit> | tar -x -C <path>`; pass it to the device tool with carry)
set -u
OUT=${OUT:-$PWD/gpu-out}
MD=$OUT/step_before_after.md
DEADLINE=${DEADLINE:-560}
PY=${PY:-python3}
REPO=$PWD
BEFORE=$(cd "${BEFORE:?BEFORE=<path to the older tree>}" && pwd)
KEEP="users/s|examples/s|sync each|passed|failed|Error|error"
source "$(dirname "$0")/_stages.sh"
header
# both builds and the ops' before/after: run_before_after.sh (which honours SKIP_BUILD and SKIP_OPS)
OUT=$OUT BEFORE=$BEFORE PY=$PY bash "$(dirname "$0")/run_before_after.sh" >"$LOGS/before_after.log" 2>&1
rc=$?
stamp "builds and ops before/after rc=$rc"
[ $rc -ne 0 ] && { tail -30 "$LOGS/before_after.log" | tee -a "$MD"; exit 1; }
[ -z "${SKIP_OPS:-}" ] && cat "$OUT/before_after.md" >>"$MD" 2>/dev/null
cd /tmp || exit 1

DATA=/tmp/w40k
[ -d $DATA ] || timeout "$(limit 120)" env PYTHONPATH=/tmp/ba_after $PY -m dv365.cli synth --users ${USERS:-64} \
  --out $DATA --seed 0 >"$LOGS/synth.log" 2>&1
stamp "synth $(tail -1 "$LOGS/synth.log" 2>/dev/null)"


STEP="--w40k --data $DATA --device cuda --bf16 --steps ${STEPS:-10} --compile-mode reduce-overhead"
run step_before 150 env PYTHONPATH=/tmp/ba_before $PY "$BEFORE/benchmarks/bench_train.py" $STEP --out "$OUT/train_before.json"
run step_after 170 env PYTHONPATH=/tmp/ba_after $PY "$REPO/benchmarks/bench_train.py" $STEP --profile 3 --out "$OUT/train_after.json"
run table_update 60 env PYTHONPATH=/tmp/ba_after $PY "$REPO/benchmarks/bench_table_update.py" --device cuda --out "$OUT/table_update.json"
T="$PY -m pytest -q -x -p no:cacheprovider --rootdir $REPO"
run tests 240 env PYTHONPATH=/tmp/ba_after $T $(for f in ${TEST_FILES:-test_deferred_checks test_bad_inputs test_slicing test_cuda_graphs \
  test_optim test_models test_train}; do echo "$REPO/tests/$f.py"; done)
run tests_knobs 150 env PYTHONPATH=/tmp/ba_after $T "$REPO/tests/test_cuda.py" -k "grouped_windows or kernel_variants"
run memcheck 120 env PYTHONPATH=/tmp/ba_after compute-sanitizer --tool memcheck --error-exitcode 1 $PY "$REPO/benchmarks/gpu/sanitize.py"
run racecheck 200 env PYTHONPATH=/tmp/ba_after compute-sanitizer --tool racecheck --error-exitcode 1 $PY "$REPO/benchmarks/gpu/sanitize.py"
cd "$REPO" || exit 1
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
stamp done
