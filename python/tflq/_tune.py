"""``tflq.tune``: the smallest per-tensor plan whose outputs, run in LiteRT, meet a target.

How it works (weight-only mode, every weight behind DEQUANTIZE):

1. The candidate tensors are those the default options quantize (``report --format plan``);
   each may be int4 per-channel, int8 per-tensor or per-channel, or float16 (smallest first;
   an encoding a
   tensor's readers cannot take is left out, as the planner says).
2. Sensitivity: for each tensor and candidate, one model with only that tensor encoded (the
   rest float32) is run on the choosing share of the inputs; the noise power it adds to each
   output (against the float model's outputs, computed once) is kept.
3. Search: noise powers of different tensors are taken to add, for each output on each
   input set (the figure is the worst over outputs and sets, as ``tflq.validate`` gives).
   From the smallest encoding of every tensor, the upgrade that removes the most noise from
   the worst (output, set) per byte is made until the predicted worst SQNR meets the target.
4. The plan is built and run on the choosing share; while it misses the target, the
   prediction's error is added to the target and the search goes on.
5. The chosen model is run on the held-out share: both figures are reported.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._errors import OptionError, ValidationError
from . import _validate as V

#: (type, granularity) of the candidate encodings, smallest first.
CANDIDATES: Tuple[Tuple[str, str], ...] = (
    ("int4", "per-channel"),
    ("int8", "per-tensor"),
    ("int8", "per-channel"),
    ("float16", "per-tensor"),
)

#: Random input sets when ``inputs`` is None.
RANDOM_SETS = 10


class TuneResult:
    """What :func:`tune` chose and measured. ``to_dict()`` holds all of it:

    ``choosing_sqnr_db`` / ``holdout_sqnr_db``: the worst output SQNR of the written model on
    the inputs used for choosing and on the held-out ones (None when there are none);
    ``met``: the target is met on the choosing share; ``bytes``: the written file's size;
    ``uniform``: size and choosing-share worst SQNR of the uniform schemes (int8 per-tensor,
    int8 per-channel, float16) for comparison; ``encodings``: tensors per encoding;
    ``seconds`` and ``invocations`` (LiteRT runs).
    """

    def __init__(self, data: Dict[str, Any]):
        self._data = data

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._data)

    def to_json_dict(self) -> Dict[str, Any]:
        return V.json_safe(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return (
            f"<tflq.TuneResult {self._data['bytes']} bytes, choosing {self._data['choosing_sqnr_db']:.1f} dB, "
            f"held out {self._data['holdout_sqnr_db']} dB>"
        )


class _Runner:
    """Runs models held in memory on fixed input sets and measures output noise."""

    def __init__(self, original: bytes, feeds: Dict[str, List[V.InputSet]], xnnpack: bool):
        self.np, self.Interpreter, self.OpResolverType = V._deps()
        self.feeds, self.xnnpack = feeds, xnnpack
        self.invocations = 0
        self.reference = self._outputs(original, "original", range(self.sets))

    @property
    def sets(self) -> int:
        return len(next(iter(self.feeds.values())))

    def _graphs(self, data: bytes, which: str) -> Dict[str, V._Graph]:
        kwargs: Dict[str, Any] = {"model_content": data}
        if not self.xnnpack:
            kwargs["experimental_op_resolver_type"] = self.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            interp = self.Interpreter(**kwargs)
            sigs = sorted(interp.get_signature_list())
            if not sigs:
                interp.allocate_tensors()
            return {k: V._Graph(interp, k, self.np) for k in (sigs or [""])}
        except Exception as e:
            raise ValidationError(f"{which} model: LiteRT cannot load it: {e}") from e

    def _outputs(self, data: bytes, which: str, idx: Sequence[int]) -> Dict[Tuple[str, str, int], Any]:
        graphs = self._graphs(data, which)
        out = {}
        for key, g in sorted(graphs.items()):
            for i in idx:
                got = V._run(g, self.feeds[key][i], which, "<memory>", key)
                self.invocations += 1
                for name, v in got.items():
                    out[(key, name, i)] = v
        return out

    def signal(self, idx: Sequence[int]) -> Dict[Tuple[str, str, int], float]:
        """Power of each float output of the original on each of the sets ``idx``."""
        np = self.np
        out: Dict[Tuple[str, str, int], float] = {}
        for (key, name, i), r in self.reference.items():
            if i in idx and r.dtype.kind in "fc":
                r64 = np.asarray(r, np.float64).ravel()
                out[(key, name, i)] = float(np.sum(r64[np.isfinite(r64)] ** 2))
        return out

    def noise(self, data: bytes, idx: Sequence[int]) -> Dict[Tuple[str, str, int], Tuple[float, float]]:
        """(signal, noise) power of each float output on each of the sets ``idx``: every
        (output, set) is one figure to meet, as ``tflq.validate`` takes the worst over sets."""
        np = self.np
        got = self._outputs(data, "tuned", idx)
        acc: Dict[Tuple[str, str, int], List[float]] = {}
        for (key, name, i), g in got.items():
            r = self.reference[(key, name, i)]
            if r.dtype.kind not in "fc":
                continue
            r64, g64 = np.asarray(r, np.float64).ravel(), np.asarray(g, np.float64).ravel()
            fin = np.isfinite(r64)
            s = float(np.sum(r64[fin] ** 2))
            d = r64[fin] - g64[fin]
            n = float(np.sum(d**2)) if np.all(np.isfinite(d)) else math.inf
            a = acc.setdefault((key, name, i), [0.0, 0.0])
            a[0] += s
            a[1] += n
        return {k: (v[0], v[1]) for k, v in acc.items()}


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _worst(measured: Dict[Tuple[str, str, int], Tuple[float, float]]) -> float:
    return min((_sqnr(s, n) for s, n in measured.values()), default=math.inf)


def _plan(groups: List[List[Dict[str, Any]]], levels: Dict[int, Tuple[str, str]]) -> Dict[str, Any]:
    """The plan document: group ``i`` (the tensors reading one buffer) encoded as ``levels[i]``,
    the rest float32."""
    tensors = []
    for i, group in enumerate(groups):
        kind, grain = levels.get(i, ("float32", "per-tensor"))
        for e in group:
            tensors.append({**e, "type": kind, "granularity": grain, "symmetric": False, "range": "minmax"})
    return {"tflq_plan": 1, "equalize": False, "tensors": tensors}


def _pareto(options: List[Any]) -> List[Any]:
    """A tensor's candidates by size, without those no less noisy on every output than a
    smaller one (no upgrade can gain from them)."""
    options = sorted(options, key=lambda o: o[1])
    kept: List[Any] = []
    for o in options:
        if any(all(k[2].get(key, 0.0) <= v for key, v in o[2].items()) and o[2] for k in kept):
            continue
        kept.append(o)
    return kept


def tune(
    original: Any,
    output: Any,
    *,
    target_sqnr: float = 30.0,
    inputs: Any = None,
    holdout: float = 0.3,
    time_budget_s: Optional[float] = None,
    seed: int = 0,
    xnnpack: bool = True,
) -> TuneResult:
    import tflq

    start = time.monotonic()
    np, _, _ = V._deps()
    src, dst = os.fspath(original), os.fspath(output)
    if not isinstance(target_sqnr, (int, float)) or isinstance(target_sqnr, bool) or not math.isfinite(target_sqnr):
        raise OptionError(f"target_sqnr must be a finite number of dB, not {target_sqnr!r}")
    if not isinstance(holdout, (int, float)) or not 0.0 <= holdout < 1.0:
        raise OptionError(f"holdout must be in [0, 1), not {holdout!r}")
    _, graphs = V._load(src, "original", xnnpack)
    feeds = V.random_inputs(graphs, RANDOM_SETS, seed) if inputs is None else V._user_inputs(inputs, graphs)
    n = len(next(iter(feeds.values())))
    order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    held = int(round(n * holdout)) if n > 1 else 0
    held = min(held, n - 1)
    choosing, holding = sorted(order[held:]), sorted(order[:held])
    with open(src, "rb") as f:
        data = f.read()
    runner = _Runner(data, feeds, xnnpack)
    base = json.loads(tflq.report(src, histograms=False, equalize=False)._native.render("plan", 120, 12))
    # Tensors that read one buffer (weights shared across subgraphs) share one encoding.
    by_buffer: Dict[int, List[Dict[str, Any]]] = {}
    for e in base["tensors"]:
        if e["type"] != "float32":
            by_buffer.setdefault(e["buffer"], []).append({k: e[k] for k in ("subgraph", "name", "buffer")})
    entries = [by_buffer[b] for b in sorted(by_buffer)]

    def build(levels: Dict[int, Tuple[str, str]]) -> Tuple[bytes, Dict[str, Any]]:
        out, summary = tflq.quantize_bytes(data, plan=_plan(entries, levels), equalize=False)
        return out, summary.to_dict()

    # Sensitivity: one model per tensor and candidate, the rest float32.
    options: List[List[Tuple[Tuple[str, str], int, Dict[Tuple[str, str, int], float]]]] = []
    out_of_time = False
    for i, e in enumerate(entries):
        mine = []
        for c in CANDIDATES:
            if time_budget_s is not None and time.monotonic() - start > time_budget_s / 2:
                out_of_time = True
            if out_of_time and c != CANDIDATES[-1]:
                continue
            try:
                model, summary = build({i: c})
            except tflq.OptionError:
                continue  # its readers cannot take this encoding
            stored = len(model)  # the whole file: codes, scales and their flatbuffer tables
            noise = {k: v[1] for k, v in runner.noise(model, choosing).items()} if not out_of_time else {}
            mine.append((c, stored, noise))
        options.append(_pareto(mine))
    signal = runner.signal(choosing)

    level = [0] * len(entries)

    def predicted(lv: List[int]) -> Dict[Tuple[str, str, int], float]:
        total = {k: 0.0 for k in signal}
        for i, l in enumerate(lv):
            if options[i]:
                for k, v in options[i][l][2].items():
                    total[k] += v
        return total

    def search(goal: float) -> None:
        while True:
            noise = predicted(level)
            worst_key = min(signal, key=lambda k: _sqnr(signal[k], noise[k]), default=None)
            if worst_key is None or _sqnr(signal[worst_key], noise[worst_key]) >= goal:
                return
            # The upgrade (to any larger encoding) removing most noise per byte from the worst output.
            best, best_gain = None, -1.0
            for i, l in enumerate(level):
                cur = options[i][l] if options[i] else None
                for j in range(l + 1, len(options[i])):
                    nxt = options[i][j]
                    removed = cur[2].get(worst_key, 0.0) - nxt[2].get(worst_key, 0.0)
                    gain = removed / max(nxt[1] - cur[1], 1)
                    if gain > best_gain:
                        best, best_gain = (i, j), gain
            if best is None:
                return
            level[best[0]] = best[1]

    goal = float(target_sqnr)
    search(goal)
    rounds = 0
    while True:
        chosen = {i: options[i][l][0] for i, l in enumerate(level) if options[i]}
        model, summary = build(chosen)
        got = _worst(runner.noise(model, choosing))
        rounds += 1
        if got >= target_sqnr or all(l + 1 >= len(options[i]) for i, l in enumerate(level) if options[i]):
            break
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            break
        before = list(level)
        goal += max(target_sqnr - got, 0.5)
        search(goal)
        if level == before:  # nothing left that the prediction says helps: the costliest step
            i = max(
                (i for i, l in enumerate(level) if options[i] and l + 1 < len(options[i])),
                key=lambda i: sum(options[i][level[i]][2].values()),
            )
            level[i] += 1
    # A uniform scheme that meets the target in fewer bytes (the search is greedy) wins.
    for c in CANDIDATES[1:]:
        lv = {}
        for i, opts in enumerate(options):
            fits = [o[0] for o in opts if CANDIDATES.index(o[0]) >= CANDIDATES.index(c)]
            if fits:
                lv[i] = min(fits, key=CANDIDATES.index)
        u_model, _ = build(lv)
        if len(u_model) < len(model):
            u_db = _worst(runner.noise(u_model, choosing))
            if u_db >= target_sqnr or (u_db > got and got < target_sqnr):
                model, chosen, got = u_model, lv, u_db
    held_db = _worst(runner.noise(model, holding)) if holding else None
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model)
    os.replace(tmp, dst)
    plan_path = os.path.splitext(dst)[0] + ".plan.json"
    with open(plan_path, "w") as f:
        json.dump(_plan(entries, chosen), f, indent=2)
        f.write("\n")
    uniform = {}
    for name, opts in (
        ("int8", {}),
        ("int8_per_channel", {"granularity": "per-channel"}),
        ("float16", {"weight_type": "float16"}),
    ):
        u, _ = tflq.quantize_bytes(data, equalize=False, **opts)
        uniform[name] = {"bytes": len(u), "choosing_sqnr_db": _worst(runner.noise(u, choosing))}
    encodings: Dict[str, int] = {}
    for i, group in enumerate(entries):
        k = "-".join(chosen[i]) if i in chosen else "float32"
        encodings[k] = encodings.get(k, 0) + len(group)
    return TuneResult(
        {
            "original": src,
            "output": dst,
            "plan": plan_path,
            "target_sqnr_db": float(target_sqnr),
            "choosing_sqnr_db": got,
            "holdout_sqnr_db": held_db,
            "met": got >= target_sqnr,
            "choosing_sets": choosing,
            "holdout_sets": holding,
            "bytes": len(model),
            "original_bytes": len(data),
            "tensors": sum(len(g) for g in entries),
            "encodings": encodings,
            "uniform": uniform,
            "verify_rounds": rounds,
            "seconds": time.monotonic() - start,
            "invocations": runner.invocations,
            "inputs": "user" if inputs is not None else "random",
        }
    )
