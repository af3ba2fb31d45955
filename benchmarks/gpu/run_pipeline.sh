#!/bin/bash
# The pipeline on the GPU machine in one command: build, then at W40K size (dv365 synth defaults: users of 10k-70k
# events, 1M / 200K / 10K ids, D = 256, the default spec, FSA) a training step stage by stage (bench_train), the
# towers (bench_towers), the loader (bench_loader), the export (bench_export), and the model / train / metrics
# tests on CUDA. Results to $OUT (at most 8 files come back: pipeline.md, *.json, logs.tgz).
#   DV365_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu/run_pipeline.sh
# Extra Python wheels the image lacks (lmdb, xxhash for the store) are installed from .whl/ when present.
set -u
OUT=${OUT:-$PWD/gpu-out}
MD=$OUT/pipeline.md
DEADLINE=${DEADLINE:-560}
PY=${PY:-python3}
KEEP="users/s|examples/s" KEEP_LINES=60
source "$(dirname "$0")/_stages.sh"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
header
build

DATA=/tmp/w40k
timeout "$(limit 120)" $PY -m dv365.cli synth --users ${USERS:-192} --out $DATA --seed 0 >"$LOGS/synth.log" 2>&1
stamp "synth rc=$? $(tail -1 "$LOGS/synth.log")"

run train_step 150 $PY benchmarks/bench_train.py --w40k --data $DATA --steps 10 --out "$OUT/train_w40k.json"
run export 150 $PY benchmarks/bench_export.py --device cuda --users 512 --repeats 1 --dir /tmp/export-work --out "$OUT/export_w40k.json"
run loader 120 $PY benchmarks/bench_loader.py --dir $DATA --workers 1,8,16 --seconds 3 --out "$OUT/loader_w40k.json"
run towers 60 $PY benchmarks/bench_towers.py --bf16 --json "$OUT/towers.json"
run train_step_compiled 120 $PY benchmarks/bench_train.py --w40k --data $DATA --steps 10 --compile --out "$OUT/train_w40k_compiled.json"
run tests_cuda 90 $PY -m pytest -q -x tests/test_models.py tests/test_metrics.py -k "cuda or bf16 or compile"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
stamp done
