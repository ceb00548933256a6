#!/usr/bin/env bash
# Whole-run benchmark: tflq against `cp` of the same files, on large seeded models.
#
#   scripts/bench.sh [--runs N] [--only NAME,...] [--no-memory] [--json FILE] [--google CMD]
#
# Builds the release binary, builds the benchmark models once into bench-data/ (gitignored;
# about 1.7 GB: a 1 GiB MLP, a 180 MiB CNN, 100 small models; rebuilt only when their
# parameters change), then times `cp` and `tflq quantize` alternately (median of N runs,
# page cache warm) and prints a table with the ratio and tflq's peak memory.
# Arguments go to scripts/bench_run.py (see its --help). See docs/bench.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "bench: cargo build --release" >&2
cargo build --release --locked --quiet

python="$(scripts/oracle-env.sh)"
echo "bench: models in bench-data/ (built once)" >&2
"$python" scripts/bench_models.py build bench-data

exec "$python" scripts/bench_run.py --tflq target/release/tflq --data bench-data "$@"
