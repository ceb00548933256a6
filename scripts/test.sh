#!/usr/bin/env bash
# The one command that runs every test of the project, from any directory, on a
# fresh machine (Rust toolchain + python3 with pip + access to crates.io/PyPI).
# Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

if [[ -f schema/regenerate.sh ]]; then
    step "schema/regenerate.sh --check"
    bash schema/regenerate.sh --check
fi

step "cargo build (tflq binary for the oracle tests)"
cargo build --locked

step "oracle venv"
python="$(scripts/oracle-env.sh)"

step "runtime-oracle tests (LiteRT)"
TFLQ_BIN="${TFLQ_BIN:-$PWD/target/debug/tflq}" "$python" -m pytest -p no:cacheprovider tests/oracle -q

step "python venv (builds and installs ./python[validate] into .venv-python)"
pyenv_python="$(scripts/python-env.sh)"

step "Python package tests"
TFLQ_BIN="${TFLQ_BIN:-$PWD/target/debug/tflq}" "$pyenv_python" -m pytest -p no:cacheprovider python/tests -q
