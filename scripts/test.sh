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

# `cargo test` has just built target/debug/tflq for the CLI tests (same dev profile, same
# features of tflq). A separate `cargo build` would compile tflq again: a test build unifies
# the features the dev-dependencies (proptest, criterion, assert_cmd) ask of shared crates, a
# plain build does not (resolver 2 and later), so the library gets another hash.
step "tflq binary for the oracle tests (built by cargo test)"
test -x target/debug/tflq

step "oracle venv"
python="$(scripts/oracle-env.sh)"

step "runtime-oracle tests (LiteRT)"
TFLQ_BIN="${TFLQ_BIN:-$PWD/target/debug/tflq}" "$python" -m pytest -p no:cacheprovider tests/oracle -q

step "python venv (builds and installs ./python[validate] into .venv-python)"
pyenv_python="$(scripts/python-env.sh)"

step "Python package tests"
TFLQ_BIN="${TFLQ_BIN:-$PWD/target/debug/tflq}" "$pyenv_python" -m pytest -p no:cacheprovider python/tests -q
