#!/bin/bash
# The W40K training step on one GPU, in one command: build (SKIP_BUILD=1 to skip), W40K data (dv365 synth: users of
# 10k-70k events, 1M / 200K / 10K ids), the sparse backward's renumbering of the id columns three ways
# (bench_unique_columns), the table update three ways (bench_table_update), then bench_train (D = 256, FSA, bf16,
# 32 examples a step): the default (touched-rows sparse gradients, eager head), then the head as CUDA graphs
# (--compile-mode reduce-overhead) with 3 more steps under torch.profiler (--profile: the top kernels overall and
# per stage); then the CUDA tests of the sparse gradients, the fused row-wise Adagrad (tests/test_optim.py) and the
# CUDA-graph head. Results to $OUT: train_step.md, *.json, logs.tgz. STEPS (10), USERS (64), SKIP_BUILD, HEAD_DIMS
# (below), PER_EVENT=1 (the previous per-event-rows backward too, for the ratio), DEADLINE (220 s: the call stays
# under 4 min) are optional.
#   DV365_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu/run_train_step.sh
set -u
OUT=${OUT:-$PWD/gpu-out}
MD=$OUT/train_step.md
DEADLINE=${DEADLINE:-220}  # stages are cut to what is left: the whole call stays under 4 min
PY=${PY:-python3}
KEEP="users/s|skipped|Error|failed"
source "$(dirname "$0")/_stages.sh"
header
if [ -z "${SKIP_BUILD:-}" ]; then
  build
fi

DATA=/tmp/w40k
[ -d $DATA ] || timeout "$(limit 120)" $PY -m dv365.cli synth --users ${USERS:-64} --out $DATA --seed 0 >"$LOGS/synth.log" 2>&1
stamp "synth $(tail -1 "$LOGS/synth.log" 2>/dev/null)"

run unique_columns 40 $PY benchmarks/bench_unique_columns.py --device cuda --events 620000 --out "$OUT/unique_columns.json"
run table_update 60 $PY benchmarks/bench_table_update.py --device cuda --out "$OUT/table_update.json"
# a tenth of the touched rows: the synthetic W40K batches' Zipf-popular ids touch fewer rows than the default
run table_update_small 60 $PY benchmarks/bench_table_update.py --device cuda --touched 35000,16000,1000 \
  --out "$OUT/table_update_small.json"
B="$PY benchmarks/bench_train.py --w40k --data $DATA --device cuda --bf16 --steps ${STEPS:-10}"
run touched_rows 90 $B --out "$OUT/train_touched_rows.json"
run cuda_graphs 150 $B --compile-mode reduce-overhead --profile 3 --out "$OUT/train_cuda_graphs.json"
[ -n "${PER_EVENT:-}" ] && run per_event_rows 90 $B --per-event-grads --out "$OUT/train_per_event_rows.json"
# optional: FSA with a fixed head width (HEAD_DIMS="16 32"; default ceil(width / heads) = 49 / 25 / 13), CUDA graphs
for hd in ${HEAD_DIMS:-}; do
  run head_dim_$hd 150 $B --compile-mode reduce-overhead --tower-arg head_dim=$hd --out "$OUT/train_head_dim_$hd.json"
done
run tests_cuda 120 $PY -m pytest -q -x tests/test_optim.py tests/test_slicing.py tests/test_models.py tests/test_train.py \
  -k "sparse_grads or one_unique or backward_matches or reduce_overhead or adagrad or cuda or optim"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
stamp done
