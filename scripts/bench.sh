#!/usr/bin/env bash
# Whole-run benchmark: tflq against `cp` of the same files, on large seeded models.
#
#   scripts/bench.sh [--runs N] [--only NAME,...] [--no-memory] [--json FILE] [--huge] [--reread]
#                    [--google "PY scripts/bench_google.py {in} {out}"]
#
# Builds the release binary and, once, the benchmark models into bench-data/ (gitignored,
# about 1.75 GB: a 1 GiB MLP, a 180 MiB CNN, a 48 MiB MLP, 100 small models; with --huge also a 9 GiB MLP
# whose output takes the offset/size layout; rebuilt only when their parameters change).
# Then times `cp` and `tflq quantize` alternately (median of N runs, page cache warm) and
# prints a table with the ratio and tflq's peak memory.
# Arguments go to scripts/bench_run.py (see its --help). See docs/bench.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "bench: cargo build --release" >&2
cargo build --release --locked --quiet

python="$(scripts/oracle-env.sh)"
echo "bench: models in bench-data/ (built once)" >&2
huge=()
for a in "$@"; do [[ "$a" == --huge ]] && huge=(--huge); done
"$python" scripts/bench_models.py build bench-data "${huge[@]}"

exec "$python" scripts/bench_run.py --tflq target/release/tflq --data bench-data "$@"
