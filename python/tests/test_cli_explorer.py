"""The Python `tflq` command and the Model Explorer node data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dacite
import pytest
from model_explorer.node_data_builder import GraphNodeData

import tflq
from conftest import tflq_bin

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PY_TFLQ = Path(sys.executable).parent / "tflq"


def run(*args):
    return subprocess.run([str(PY_TFLQ), *map(str, args)], capture_output=True, text=True)


def test_the_python_command_is_the_rust_command(tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    r = run("quantize", FIXTURES / "cnn.tflite", "-o", a, "--granularity", "per-channel", "--json")
    rb = tflq_bin("quantize", FIXTURES / "cnn.tflite", "-o", b, "--granularity", "per-channel", "--json")
    assert r.returncode == 0 and a.read_bytes() == b.read_bytes()
    ja, jb = json.loads(r.stdout), json.loads(rb.stdout)
    for j in (ja, jb):
        j.pop("seconds"), j.pop("output")
    assert ja == jb
    for args, code in [(["quantize", tmp_path / "missing.tflite", "-o", a], 1), (["quantize", "--bogus"], 2),
                       (["report", FIXTURES / "cnn.tflite", "--fail-below-sqnr", "99"], 3)]:
        assert run(*args).returncode == code == tflq_bin(*args, check=False).returncode
    assert run("report", FIXTURES / "cnn.tflite").stdout == tflq_bin("report", FIXTURES / "cnn.tflite").stdout
    h = run("--help")
    assert h.returncode == 0 and "quantize" in h.stdout and "validate" in h.stdout


def read_with_model_explorer(data: dict) -> GraphNodeData:
    """Model Explorer's own dataclasses, strictly (unknown keys and wrong types fail), and the
    web app's test for a graph-level file (results present, not nested)."""
    assert data.get("results") is not None and data["results"].get("results") is None
    g = dacite.from_dict(GraphNodeData, data, config=dacite.Config(strict=True))
    assert json.loads(g.to_json_string()) == {**data, **{k: v for k, v in json.loads(g.to_json_string()).items() if k not in data}}
    return g


@pytest.mark.parametrize("model", ["cnn.tflite", "mlp.tflite", "lstm.tflite", "two_signatures.tflite"])
def test_model_explorer_node_data(model, tmp_path):
    rep = tflq.report(FIXTURES / model)
    data = rep.to_model_explorer()
    g = read_with_model_explorer(data)
    want = {}
    for t in rep.to_dict()["tensors"]:
        v = 1000.0 if t["sqnr_db"] is None else t["sqnr_db"]
        want[t["name"]] = min(v, want.get(t["name"], v))
    assert {k: r.value for k, r in g.results.items()} == want
    assert [t.value for t in g.thresholds] == sorted(t.value for t in g.thresholds)
    out = tmp_path / "me.json"
    r = run("report", FIXTURES / model, "--format", "model-explorer", "-o", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == data
    # The Rust binary writes the same node data (the Python command runs its code).
    rust = subprocess.run(
        [os.environ.get("TFLQ_BIN", "target/debug/tflq"), "report", str(FIXTURES / model),
         "--format", "model-explorer"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(rust.stdout) == data


def test_validate_writes_model_explorer_data(tmp_path):
    q = tmp_path / "q.tflite"
    tflq.quantize(FIXTURES / "cnn.tflite", q)
    res = tflq.validate(FIXTURES / "cnn.tflite", q, trials=1)
    g = read_with_model_explorer(res.to_model_explorer())
    assert {k: r.value for k, r in g.results.items()} == {o["tensor"]: o["sqnr_db"] for o in res.outputs}
