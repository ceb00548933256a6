"""Runtime-oracle test of the batch mode: a tree of every fixture, converted in one run.

`tflq quantize STORE -o OUT --json` on a tree that holds every fixture in nested folders,
a truncated model, a file named .tflite that is not a model, a link to a model and a file
that is not a model. Checks: exit code 1 (some failed), one JSON line per model, and every
good model's output is byte-identical to what the single-file mode writes (which
test_oracle.py judges in depth) and is loaded, allocated and run by LiteRT.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("ORACLE_FIXTURES", ROOT / "fixtures"))
TFLQ = Path(os.environ.get("TFLQ_BIN", ROOT / "target" / "debug" / "tflq"))


def fixture_files() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.tflite"))


def build_store(store: Path) -> dict[str, str]:
    """Lays out the tree; returns {relative path: fixture name} of the good models."""
    good = {}
    for n, name in enumerate(fixture_files()):
        rel = f"team{n % 3}/v{n % 2}/{name}"
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes((FIXTURES / name).read_bytes())
        good[rel] = name
    (store / "links").mkdir()
    (store / "links/mlp.tflite").symlink_to(store / next(r for r, f in good.items() if f == "mlp.tflite"))
    good["links/mlp.tflite"] = "mlp.tflite"
    cnn = (FIXTURES / "cnn.tflite").read_bytes()
    (store / "broken").mkdir()
    (store / "broken/truncated.tflite").write_bytes(cnn[: len(cnn) // 3])
    (store / "broken/text.tflite").write_text("not a model\n")
    (store / "README.md").write_text("# models\n")
    return good


def run_once(path: Path) -> None:
    interp = Interpreter(model_path=str(path))
    sigs = interp.get_signature_list()
    if sigs:
        for key in sigs:
            runner = interp.get_signature_runner(key)
            feeds = {k: np.zeros([max(1, d) for d in v["shape"]], v["dtype"])
                     for k, v in runner.get_input_details().items()}
            assert runner(**feeds), f"{path}: signature {key} gave no outputs"
        return
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()


def test_batch_converts_every_good_model_of_a_tree(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    good = build_store(store)
    proc = subprocess.run([str(TFLQ), "quantize", str(store), "-o", str(out), "--json"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    totals = lines.pop()
    assert totals["kind"] == "totals"
    by_path = {line["path"]: line for line in lines if line["kind"] == "model"}
    assert set(by_path) == set(good) | {"broken/truncated.tflite", "broken/text.tflite"}
    assert by_path["broken/truncated.tflite"]["status"] == "failed"
    assert by_path["broken/text.tflite"]["status"] == "failed"
    assert totals["failed"] == 2 and totals["errors"] == 2 and totals["ignored"] == 1

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(good)
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    for rel, name in sorted(good.items()):
        single = single_dir / name
        if not single.exists():
            subprocess.run([str(TFLQ), "quantize", str(FIXTURES / name), "-o", str(single), "-q"],
                           check=True, timeout=600)
        assert (out / rel).read_bytes() == single.read_bytes(), rel
        assert by_path[rel]["status"] in {"quantized", "unchanged"}, by_path[rel]
        run_once(out / rel)
