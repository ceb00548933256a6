"""The ``tflq`` command of the Python package.

The same command line as the Rust binary (it runs the binary's own code, in the native
module), plus:

``tflq validate ORIGINAL QUANTIZED [--inputs FILE.npz] [--json] [--min-sqnr DB] ...``
    Run both models in LiteRT on the same inputs and compare every output. Exit codes: 0,
    1 (a model cannot be loaded or run, or gives new NaN/Inf), 2 (usage), 3 (an output's SQNR
    is below ``--min-sqnr``).
``tflq tune ORIGINAL -o OUTPUT [--target-sqnr DB] [--inputs F.npz] [--holdout F] [--json]``
    The smallest per-tensor plan whose worst output SQNR, run in LiteRT, meets the target on
    the choosing share of the inputs; writes OUTPUT and its plan (OUTPUT without extension +
    ``.plan.json``) and prints both the choosing and the held-out figures. Exit codes: 0, 1
    (a model cannot be run), 2 (usage), 3 (the target is not met on the choosing share).

(``tflq report --format model-explorer`` writes Model Explorer's per-node data of the weights'
SQNR; it is the Rust command's own format, as in the binary.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Optional

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXTRA_HELP = """
Python package only:
  validate  Run the original and the quantized model in LiteRT and compare their outputs
            (tflq validate --help)
  tune      The smallest per-tensor plan whose outputs meet a target SQNR in LiteRT
            (tflq tune --help)
"""


def _validate(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tflq validate",
        description="Run ORIGINAL and QUANTIZED in LiteRT on the same inputs (every signature, or the "
        "default graph) and compare every output: SQNR in dB (worst over the input sets), max abs "
        "error, cosine similarity.",
        epilog="Exit codes: 0 success; 1 a model cannot be loaded or run, or gives NaN/Inf where the "
        "original does not; 2 invalid command line or inputs; 3 an output's SQNR is below --min-sqnr; "
        "130 interrupted.",
    )
    p.add_argument("original", metavar="ORIGINAL")
    p.add_argument("quantized", metavar="QUANTIZED")
    p.add_argument("--inputs", metavar="FILE.npz", help="input arrays keyed by input name (or SIGNATURE/INPUT); default: seeded random values")
    p.add_argument("--trials", type=int, default=3, metavar="N", help="random input sets (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--no-xnnpack", action="store_true", help="run without the XNNPACK delegate")
    p.add_argument("--json", action="store_true", help="print the result as JSON (infinite SQNR as null)")
    p.add_argument("--min-sqnr", type=float, metavar="DB", help="exit with code 3 if any output's SQNR is below DB")
    p.add_argument("--model-explorer", metavar="FILE", help="also write Model Explorer node data of the outputs' SQNR to FILE")
    args = p.parse_args(argv)
    import tflq

    try:
        result = tflq.validate(
            args.original, args.quantized, args.inputs, trials=args.trials, seed=args.seed, xnnpack=not args.no_xnnpack
        )
    except tflq.OptionError as e:
        print(f"tflq: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (tflq.Error, ImportError) as e:
        print(f"tflq: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.model_explorer:
        with open(args.model_explorer, "w") as f:
            json.dump(result.to_model_explorer(), f, indent=2)
    if args.json:
        print(json.dumps(result.to_json_dict(), indent=2))
    else:
        print(f"{result.original} vs {result.quantized} ({result.trials} input sets)")
        for o in result.outputs:
            where = f"{o['signature']}/{o['output']}" if o["signature"] else o["output"]
            print(f"  {where:<40} SQNR {_db(o['sqnr_db']):>8}  max abs err {o['max_abs_error']:.4g}  cosine {o['cosine']:.6f}")
        print(f"worst: {_db(result.worst_sqnr_db)} SQNR")
    if args.min_sqnr is not None:
        below = result.below(args.min_sqnr)
        if below:
            w = below[0] if len(below) == 1 else min(below, key=lambda o: o["sqnr_db"])
            print(
                f"tflq: {len(below)} of {len(result.outputs)} outputs below {args.min_sqnr} dB SQNR; "
                f"worst {_db(w['sqnr_db'])}: signature {w['signature']!r} output {w['output']!r}",
                file=sys.stderr,
            )
            return EXIT_GATE
    return EXIT_OK


def _tune(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tflq tune",
        description="Choose each weight's encoding (int4 or int8 per channel, float16) so that the file is "
        "smallest while the worst output SQNR, run in LiteRT, meets --target-sqnr on the choosing share of "
        "the inputs; then measure the held-out share. Writes OUTPUT and its plan.",
        epilog="Exit codes: 0 success; 1 a model cannot be run; 2 invalid command line or inputs; 3 the "
        "target is not met on the choosing share; 130 interrupted.",
    )
    p.add_argument("original", metavar="ORIGINAL")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT")
    p.add_argument("--target-sqnr", type=float, default=30.0, metavar="DB", help="worst output SQNR to meet (default 30)")
    p.add_argument("--inputs", metavar="FILE.npz", help="input sets (default: seeded random values)")
    p.add_argument("--holdout", type=float, default=0.3, metavar="F", help="share of the input sets held out (default 0.3)")
    p.add_argument("--time-budget", type=float, metavar="S", help="seconds to aim for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON (infinite SQNR as null)")
    args = p.parse_args(argv)
    import tflq

    inputs = None
    if args.inputs:
        import numpy as np

        try:
            with np.load(args.inputs, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            print(f"tflq: error: --inputs {args.inputs}: {e}", file=sys.stderr)
            return EXIT_USAGE
        # Arrays with a leading axis of input sets: one set per index.
        counts = {len(v) for v in arrays.values() if v.ndim > 0}
        n = counts.pop() if len(counts) == 1 else 1
        inputs = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]
    try:
        r = tflq.tune(
            args.original,
            args.output,
            target_sqnr=args.target_sqnr,
            inputs=inputs,
            holdout=args.holdout,
            time_budget_s=args.time_budget,
            seed=args.seed,
        )
    except tflq.OptionError as e:
        print(f"tflq: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (tflq.Error, ImportError) as e:
        print(f"tflq: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    d = r.to_dict()
    if args.json:
        print(json.dumps(r.to_json_dict(), indent=2))
    else:
        print(f"{d['original']} -> {d['output']} (plan: {d['plan']})")
        print(f"target:    {d['target_sqnr_db']:.1f} dB worst output SQNR")
        print(f"choosing:  {_db(d['choosing_sqnr_db'])} on {len(d['choosing_sets'])} input sets")
        held = "no held-out sets" if d["holdout_sqnr_db"] is None else f"{_db(d['holdout_sqnr_db'])} on {len(d['holdout_sets'])} input sets"
        print(f"held out:  {held}")
        print("encodings: " + ", ".join(f"{n} {k}" for k, n in sorted(d["encodings"].items())))
        print(f"size:      {d['bytes']} bytes (float32 {d['original_bytes']})")
        for name, u in d["uniform"].items():
            print(f"  uniform {name:<17} {u['bytes']:>10} bytes  {_db(u['choosing_sqnr_db'])}")
        print(f"time:      {d['seconds']:.1f} s, {d['invocations']} LiteRT invocations")
    return EXIT_OK if d["met"] else EXIT_GATE


def _db(v: float) -> str:
    if math.isinf(v):
        return "exact" if v > 0 else "-inf dB"
    return f"{v:.1f} dB"


def run(argv: List[str]) -> int:
    """Runs the command line ``argv`` (without the program name); returns the exit code."""
    try:
        if argv[:1] == ["validate"]:
            return _validate(argv[1:])
        if argv[:1] == ["tune"]:
            return _tune(argv[1:])
    except KeyboardInterrupt:
        print("tflq: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if argv[:1] in (["-h"], ["--help"], ["help"], []):
        from . import _tflq

        code = _tflq.run_cli(["tflq", *argv])
        sys.stdout.write(EXTRA_HELP)
        return code
    from . import _tflq

    sys.stdout.flush()
    return _tflq.run_cli(["tflq", *argv])


def main(argv: Optional[List[str]] = None) -> None:
    code = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.exit(code)
