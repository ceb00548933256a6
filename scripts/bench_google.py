#!/usr/bin/env python3
"""Quantize IN to OUT with Google's ai-edge-quantizer, for comparison (scripts/bench.sh --google).

    PY scripts/bench_google.py IN OUT

PY is a Python with `ai-edge-quantizer` installed (it needs no TensorFlow), e.g.
    python3 -m venv /tmp/venv-aeq && /tmp/venv-aeq/bin/pip install ai-edge-quantizer

The recipe is the closest to tflq's: weight-only int8 (weights stored as int8 and
dequantized before each op, activations in float32).
"""

import sys

from ai_edge_quantizer import quantizer, recipe


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    qt = quantizer.Quantizer(src)
    qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    qt.quantize().export_model(dst, overwrite=True)


if __name__ == "__main__":
    main()
