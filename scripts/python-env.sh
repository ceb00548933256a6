#!/usr/bin/env bash
# Create (once) the virtual environment of the Python package's tests, install the package
# into it from python/ (every time: an incremental build), and print the path of its python.
# The environment is re-created when python/pyproject.toml, python/tests/requirements.txt or
# the python version change (their sha256 is stored in the venv), or an install did not
# finish. The package is built with cargo's dev profile into target/python, apart from
# target/debug: maturin builds PyO3 for an extension module (PYO3_BUILD_EXTENSION_MODULE),
# cargo for linking, and sharing one folder would rebuild PyO3 on each switch.
#   Usage: PY="$(scripts/python-env.sh)"
# Everything except the final path goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-python"
req="$root/python/tests/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${TFLQ_PYTHON:-python3}"
pip=(--quiet --disable-pip-version-check --no-input)

want="$(cat "$req" "$root/python/pyproject.toml" | sha256sum | cut -d' ' -f1) $("$python" -V 2>&1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "python-env: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || {
        echo "python-env: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    # The package's declared dependencies (its [validate] extra) and the test tools.
    "$venv/bin/python" -m pip install "${pip[@]}" -r "$req" >&2
    echo "$want" >"$stamp"
fi
# `pip install './python[validate]'`, with the build backend from the venv (no download) and
# a debug build: the tests need the API, not the kernels' speed.
PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="${TFLQ_PYTHON_TARGET:-$root/target/python}" \
MATURIN_PEP517_ARGS="${MATURIN_PEP517_ARGS:---profile dev}" \
    "$venv/bin/python" -m pip install "${pip[@]}" --no-build-isolation --force-reinstall --no-deps "$root/python[validate]" >&2
"$venv/bin/python" -m pip check >&2
echo "$venv/bin/python"
