"""Runtime oracle for damaged models: what tflq accepts, it writes as loadable as it was.

Seeded damaged copies of every fixture (bytes overwritten, 4-byte fields set to boundary
values, truncations, aimed at the parts of the file that hold the structure) go through
`tflq quantize`, which must:

* exit 0 or 1, never crash or hang; on 1, print one message naming the file, and leave no
  output and no temporary file;
* on 0, write a model that the LiteRT runtime loads (builds an interpreter for and
  allocates) whenever it loads the damaged input.

tflq refuses what the runtime refuses when it builds the interpreter (see
docs/robustness.md); operator-specific checks (input counts, shapes) happen later in the
runtime, and a damaged model that fails those fails them the same way before and after.

The runtime itself is not hardened against damaged files and sometimes crashes on them,
not always the same way twice: models are loaded in a child process, restarted after a
crash, and a crash counts as "does not load". A case fails only if the input loads every
time and the output never does.

Environment: TFLQ_BIN, ORACLE_FIXTURES (as test_oracle.py), TFLQ_HOSTILE_CASES (default
400).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("ORACLE_FIXTURES", ROOT / "fixtures"))
TFLQ = Path(os.environ.get("TFLQ_BIN", ROOT / "target" / "debug" / "tflq"))
CASES = int(os.environ.get("TFLQ_HOSTILE_CASES", "400"))
BOUNDARY = [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFF, 4, 8]

LOADER = r"""
import sys
from ai_edge_litert.interpreter import Interpreter
for line in sys.stdin:
    path = line.strip()
    try:
        Interpreter(model_path=path).allocate_tensors()
        print("ok", flush=True)
    except Exception:
        print("fails", flush=True)
"""


def loads(paths: list[Path]) -> list[bool]:
    """Whether LiteRT loads each model; a crash of the runtime counts as no."""
    results: list[bool] = []
    while len(results) < len(paths):
        rest = paths[len(results):]
        proc = subprocess.run(
            [sys.executable, "-c", LOADER], input="".join(f"{p}\n" for p in rest),
            capture_output=True, text=True, timeout=600, check=False,
        )
        answers = [line == "ok" for line in proc.stdout.splitlines() if line in ("ok", "fails")]
        results.extend(answers)
        if len(results) < len(paths):
            results.append(False)  # the runtime crashed on this one
    return results


def position(n: int, rng: random.Random) -> int:
    """Where converters put the tables: the root near the start, the subgraphs, tensors and
    operators near the end (after the weight data)."""
    if rng.randrange(2):
        return rng.randrange(min(n, 2048))
    return n - 1 - rng.randrange(min(n, 12288))


def damage(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        at = position(len(b), rng)
        at = at & ~3 if kind < 2 else at
        if kind == 0:
            b[at:at + 4] = rng.choice(BOUNDARY).to_bytes(4, "little")
        elif kind == 1:
            old = int.from_bytes(b[at:at + 4], "little")
            b[at:at + 4] = ((old + rng.randint(-8, 8)) % 2**32).to_bytes(4, "little")
        elif kind == 2:
            b[at] = rng.randrange(256)
        else:
            b[at] ^= 1 << rng.randrange(8)
    if rng.randrange(8) == 0:
        del b[rng.randrange(len(b)):]
    return bytes(b)


def test_damaged_models_are_refused_or_written_as_loadable(tmp_path):
    rng = random.Random(20261126)
    fixtures = sorted(FIXTURES.glob("*.tflite"))
    accepted: list[tuple[Path, Path]] = []
    refused = 0
    for i in range(CASES):
        case = tmp_path / f"case{i}"
        case.mkdir()
        src = fixtures[i % len(fixtures)]
        data = damage(src.read_bytes(), rng)
        model = case / "in.tflite"
        model.write_bytes(data)
        out = case / "out.tflite"
        proc = subprocess.run(
            [str(TFLQ), "quantize", str(model), "-o", str(out), "-q"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode in (0, 1), f"{src.name} case {i}: exit {proc.returncode}\n{proc.stderr}"
        assert model.read_bytes() == data, "the input was changed"
        if proc.returncode == 1:
            refused += 1
            assert proc.stderr.startswith(f"tflq: error: {model}"), proc.stderr
            assert "panicked" not in proc.stderr
            assert sorted(p.name for p in case.iterdir()) == ["in.tflite"]
        else:
            assert sorted(p.name for p in case.iterdir()) == ["in.tflite", "out.tflite"]
            accepted.append((model, out))
    assert refused and accepted, (refused, len(accepted))

    flat = [p for pair in accepted for p in pair]
    first = loads(flat)
    suspects = [pair for k, pair in enumerate(accepted) if first[2 * k] and not first[2 * k + 1]]
    for model, out in suspects:
        again = loads([model, out, model, out, model, out])
        if all(again[0::2]) and not any(again[1::2]):
            pytest.fail(f"LiteRT loads {model} but not tflq's output {out}")
    print(f"\nhostile: {CASES} damaged models, {refused} refused, {len(accepted)} written; "
          f"of those, {sum(first[0::2])} inputs and {sum(first[1::2])} outputs load in LiteRT")
