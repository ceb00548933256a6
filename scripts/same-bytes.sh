#!/usr/bin/env bash
# Checks that two tflq binaries write the same bytes: every fixture (and the benchmark models
# in bench-data/, when built) in 13 option sets, through quantize (model, --json, stderr),
# report --json, report --format plan and report --against. For changes meant to keep the
# output (speed work, restructuring).
#
#   scripts/same-bytes.sh OLD_BINARY NEW_BINARY [OUT_DIR]
#
# Prints each output that differs and a count; exits 1 if any does.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
old=$1 new=$2 d=${3:-$(mktemp -d)}
mkdir -p "$d"
opts=("" "--no-equalize" "--equalize-only" "--range mse" "--symmetric" "--granularity per-channel"
      "--mode dynamic" "--type float16" "--type int4" "--min-elements 0" "--quantize-biases"
      "--min-elements 0 --quantize-biases --range mse" "--target micro")
models=(fixtures/*.tflite)
[[ -f bench-data/mlp-50m.tflite ]] && models+=(bench-data/mlp-50m.tflite)
[[ -d bench-data/small ]] && models+=("$(ls bench-data/small/*.tflite | head -1)")
n=0 differ=0
for m in "${models[@]}"; do
  b=$(basename "$m" .tflite)
  for i in "${!opts[@]}"; do
    # shellcheck disable=SC2086
    for v in old new; do
      bin=${!v} o="$d/$b.$i.$v"
      $bin quantize "$m" -o "$o.tflite" ${opts[$i]} --json > "$o.json" 2> "$o.err"; echo "rc=$?" >> "$o.err"
      $bin report "$m" ${opts[$i]} --json > "$o.rep.json" 2> /dev/null
      $bin report "$m" ${opts[$i]} --format plan > "$o.plan.json" 2> /dev/null
      $bin report "$m" --against "$o.tflite" --json > "$o.ag.json" 2> /dev/null
      # Times and the output's own name differ by nature.
      sed -i -E 's/"seconds": ?[0-9.e-]+/"seconds":0/g; s/\.(old|new)\.tflite/.X.tflite/g' \
        "$o.json" "$o.rep.json" "$o.ag.json"
    done
    for s in tflite json err rep.json plan.json ag.json; do
      n=$((n + 1))
      if [[ -e "$d/$b.$i.old.$s" ]] && ! cmp -s "$d/$b.$i.old.$s" "$d/$b.$i.new.$s"; then
        echo "differs: $b [${opts[$i]}] $s"
        differ=$((differ + 1))
      fi
    done
  done
done
echo "compared $n outputs, $differ differ (in $d)"
[[ $differ -eq 0 ]]
