#!/usr/bin/env bash
# Create (once) the Python virtual environment for the runtime-oracle tests and
# print the path of its python. Re-created whenever tests/oracle/requirements.txt
# changes (its sha256 and the python version are stored inside the venv) or a
# previous install did not finish.
#   Usage: PY="$(scripts/oracle-env.sh)"
# Everything except the final path goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-oracle"
req="$root/tests/oracle/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${ORACLE_PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1) $("$python" -V 2>&1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "oracle-env: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || {
        echo "oracle-env: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$req" >&2
    echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
