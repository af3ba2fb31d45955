#!/bin/bash
# W40K sliced_pool forward and backward of an older tree against this one, on one GPU in one call: both trees are
# built (in parallel, each into its own --target folder), one workload is saved, and each build times it twice,
# interleaved (before, after, before, after), so drift of the GPU's clocks shows as a difference between a build's
# two runs. The table goes to $OUT/before_after.md.
#   BEFORE=<path to the older tree's sources> bash benchmarks/gpu/run_before_after.sh
# SKIP_BUILD=1 reuses a warm machine's /tmp/ba_before and /tmp/ba_after; SKIP_OPS=1 only builds them (what
# run_step_before_after.sh uses before its own stages).
# (make the older tree with `git archive <commit> | tar -x -C <path>`; pass it to the device tool with carry)
set -u
OUT=${OUT:-$PWD/gpu-out}
BEFORE=${BEFORE:?BEFORE=<path to the older tree>}
mkdir -p "$OUT"
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
build() {  # tree, target
  CMAKE_BUILD_PARALLEL_LEVEL=8 $PY -m pip install -q --no-build-isolation --no-deps --target "$2" "$1" \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Cbuild-dir="$2.build" >"$2.log" 2>&1
}
if [ -z "${SKIP_BUILD:-}" ]; then
  build "$BEFORE" /tmp/ba_before & pb=$!
  build . /tmp/ba_after & pa=$!
  wait $pb; rb=$?
  wait $pa; ra=$?
  stamp "build before rc=$rb after rc=$ra"
  [ $rb -ne 0 ] && tail -20 /tmp/ba_before.log
  [ $ra -ne 0 ] && tail -20 /tmp/ba_after.log
  [ $rb -ne 0 ] || [ $ra -ne 0 ] && exit 1
fi
[ -n "${SKIP_OPS:-}" ] && exit 0
W=/tmp/ba_w40k.pt
PYTHONPATH=/tmp/ba_after $PY benchmarks/gpu/before_after.py save --path $W
runs=()
for i in 1 2; do
  for label in before after; do
    PYTHONPATH=/tmp/ba_$label $PY benchmarks/gpu/before_after.py time --path $W --label "$label$i" \
      --out /tmp/ba_$label$i.json || exit 1
    runs+=(/tmp/ba_$label$i.json)
  done
done
$PY benchmarks/gpu/before_after.py compare "${runs[@]}" --md "$OUT/before_after.md"
stamp done
