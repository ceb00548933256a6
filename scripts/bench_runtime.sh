#!/usr/bin/env bash
# Runtime benchmark of the quantization modes in LiteRT (see scripts/bench_runtime.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked
python="$(scripts/oracle-env.sh)"
exec "$python" scripts/bench_runtime.py "$@"
