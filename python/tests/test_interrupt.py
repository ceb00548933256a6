"""Ctrl-C: KeyboardInterrupt, no partial file, and the process can quantize again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r"""
import sys, time, tflq
src, out, small, which = sys.argv[1:5]
print("started", flush=True)
t = time.monotonic()
try:
    if which == "file":
        tflq.quantize(src, out)
    else:
        tflq.quantize_dir([src], out, jobs=1, progress=False)
    print("finished", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - t:.2f}", flush=True)
# A stop does not stay set: the next call works.
tflq.quantize(small, out + ".small.tflite")
print("after ok", flush=True)
"""


@pytest.mark.parametrize("which", ["file", "dir"])
def test_ctrl_c_raises_and_leaves_no_partial_file(big_model, tmp_path, which):
    fixtures = Path(__file__).resolve().parents[2] / "fixtures"
    work = tmp_path / "out"
    work.mkdir()
    if which == "file":
        src, out = big_model, work / "big.int8.tflite"
    else:
        src = tmp_path / "in"
        src.mkdir()
        for i in range(3):
            os.link(big_model, src / f"m{i}.tflite")
        out = work / "batch"
    p = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(src), str(out), str(fixtures / "mlp.tflite"), which],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert p.stdout.readline().strip() == "started"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "interrupted after" in stdout and "finished" not in stdout, stdout
    assert "after ok" in stdout
    # Nothing of the interrupted model is left: only the small model written afterwards.
    left = sorted(x.name for x in work.rglob("*") if x.is_file())
    assert left == [out.name + ".small.tflite"], left
