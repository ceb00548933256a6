"""``tflq.validate``: run the original and the quantized model in LiteRT and compare outputs.

Needs the ``validate`` extra (``pip install 'tflq[validate]'``: ai-edge-litert and numpy).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._errors import OptionError, ValidationError

#: Random integer inputs are drawn uniformly from this closed range (indices stay small).
INT_RANGE = (0, 9)

InputSet = Dict[str, Any]


def _deps() -> Tuple[Any, Any, Any]:
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            "tflq.validate needs ai-edge-litert and numpy: pip install 'tflq[validate]' "
            f"(from a clone: pip install './python[validate]'); {e}"
        ) from e
    return np, Interpreter, OpResolverType


class _Graph:
    """One signature of a model (or its default graph, key ``""``), ready to run."""

    def __init__(self, interp: Any, key: str, np: Any):
        self.interp, self.key, self.np = interp, key, np
        if key:
            self.runner = interp.get_signature_runner(key)
            self.inputs = dict(self.runner.get_input_details())
            self.outputs = dict(self.runner.get_output_details())
        else:
            self.runner = None
            self.inputs = {d["name"]: d for d in interp.get_input_details()}
            self.outputs = {d["name"]: d for d in interp.get_output_details()}

    def run(self, feeds: InputSet) -> Dict[str, Any]:
        np = self.np
        if self.runner is not None:
            return {k: np.array(v) for k, v in self.runner(**feeds).items()}
        interp = self.interp
        details = interp.get_input_details()
        for d in details:
            interp.resize_tensor_input(d["index"], feeds[d["name"]].shape)
        interp.allocate_tensors()
        for d in details:
            interp.set_tensor(d["index"], feeds[d["name"]])
        interp.invoke()
        return {d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}


def _load(path: str, which: str, xnnpack: bool) -> Tuple[Any, Dict[str, _Graph]]:
    np, Interpreter, OpResolverType = _deps()
    if not os.path.exists(path):
        raise ValidationError(f"{which} model {path}: no such file")
    kwargs: Dict[str, Any] = {"model_path": path}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = Interpreter(**kwargs)
        sigs = sorted(interp.get_signature_list())
        if not sigs:
            interp.allocate_tensors()
        graphs = {k: _Graph(interp, k, np) for k in (sigs or [""])}
    except Exception as e:  # LiteRT raises ValueError/RuntimeError with its own message
        raise ValidationError(f"{which} model {path}: LiteRT cannot load it: {e}") from e
    return interp, graphs


def _shape(detail: Mapping[str, Any]) -> List[int]:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) else detail["shape"]
    return [1 if int(d) < 0 else int(d) for d in dims]


def _random_input(np: Any, detail: Mapping[str, Any], rng: Any) -> Any:
    shape = _shape(detail)
    dtype = np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(INT_RANGE[0], INT_RANGE[1], size=shape, endpoint=True).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_inputs(graphs: Mapping[str, _Graph], trials: int, seed: int) -> Dict[str, List[InputSet]]:
    """``trials`` seeded input sets per signature: trial t of signature number n (sorted by
    key) uses ``numpy.random.default_rng([seed, t, n])``, inputs in sorted name order."""
    np, _, _ = _deps()
    out: Dict[str, List[InputSet]] = {}
    for n, (key, g) in enumerate(sorted(graphs.items())):
        sets = []
        for t in range(trials):
            rng = np.random.default_rng([seed, t, n])
            sets.append({name: _random_input(np, d, rng) for name, d in sorted(g.inputs.items())})
        out[key] = sets
    return out


def _user_inputs(inputs: Any, graphs: Mapping[str, _Graph]) -> Dict[str, List[InputSet]]:
    np, _, _ = _deps()
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        try:
            with np.load(path, allow_pickle=False) as z:
                inputs = {k: z[k] for k in z.files}
        except Exception as e:
            raise OptionError(f"inputs: cannot read {path} as .npz: {e}") from e
    sets: List[Mapping[str, Any]]
    if isinstance(inputs, Mapping):
        sets = [inputs]
    elif isinstance(inputs, Sequence) and all(isinstance(s, Mapping) for s in inputs):
        sets = list(inputs)
    else:
        raise OptionError("inputs must be None, a dict of arrays, a list of dicts or the path of an .npz file")
    if not sets:
        raise OptionError("inputs: no input sets")
    out: Dict[str, List[InputSet]] = {k: [] for k in graphs}
    for i, s in enumerate(sets):
        for key, g in graphs.items():
            feeds: InputSet = {}
            for name, d in g.inputs.items():
                value = None
                if isinstance(s.get(key), Mapping):
                    value = s[key].get(name)
                if value is None:
                    value = s.get(f"{key}/{name}") if key else None
                if value is None:
                    value = s.get(name)
                if value is None:
                    where = f"signature {key!r} " if key else ""
                    raise OptionError(f"inputs: set {i} has no value for {where}input {name!r} (has: {sorted(s)})")
                arr = np.asarray(value)
                want = np.dtype(d["dtype"])
                if arr.dtype != want:
                    if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
                        raise OptionError(f"inputs: set {i} input {name!r} has dtype {arr.dtype}, the model wants {want}")
                    arr = arr.astype(want)
                sig = d.get("shape_signature")
                dims = list(sig) if sig is not None and len(sig) else list(d["shape"])
                if len(dims) != arr.ndim or any(int(w) >= 0 and int(w) != a for w, a in zip(dims, arr.shape)):
                    raise OptionError(
                        f"inputs: set {i} input {name!r} has shape {list(arr.shape)}, the model wants {[int(x) for x in dims]}"
                    )
                feeds[name] = arr
            out[key].append(feeds)
    return out


def compare(ref: Any, got: Any) -> Dict[str, float]:
    """SQNR in dB, max abs error and cosine of ``got`` against ``ref`` (float64)."""
    np, _, _ = _deps()
    r = np.asarray(ref, dtype=np.float64).ravel()
    g = np.asarray(got, dtype=np.float64).ravel()
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0.0 and ng == 0.0:
        cosine = 1.0
    elif nr == 0.0 or ng == 0.0:
        cosine = 0.0
    else:
        cosine = float(np.dot(r, g) / (nr * ng))
    max_abs = float(np.max(np.abs(r - g))) if r.size else 0.0
    return {"sqnr_db": sqnr, "max_abs_error": max_abs, "cosine": cosine}


def json_safe(v: Any) -> Any:
    """``v`` with every infinite or NaN float replaced by ``None`` (JSON has neither)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v


class ValidationResult:
    """The outputs of two models compared in LiteRT.

    ``outputs``: one dict per output of every signature: ``signature`` ("" for the default
    graph), ``output`` (its name), ``tensor`` (the output tensor's name), ``shape``,
    ``sqnr_db`` (the worst over the trials; ``inf`` when identical), ``max_abs_error`` (the
    largest), ``cosine`` (the lowest), ``trials``. ``worst_sqnr_db`` and ``worst``: the
    output with the lowest SQNR. ``to_dict()`` holds all of it; ``to_json_dict()`` the same
    with infinities as ``None`` (what ``tflq validate --json`` prints).
    """

    def __init__(self, original: str, quantized: str, outputs: List[Dict[str, Any]], trials: int, seed: Optional[int], xnnpack: bool, user_inputs: bool):
        self.original, self.quantized = original, quantized
        self.outputs = outputs
        self.trials, self.seed, self.xnnpack, self.user_inputs = trials, seed, xnnpack, user_inputs

    @property
    def worst(self) -> Optional[Dict[str, Any]]:
        return min(self.outputs, key=lambda o: o["sqnr_db"]) if self.outputs else None

    @property
    def worst_sqnr_db(self) -> float:
        w = self.worst
        return w["sqnr_db"] if w is not None else math.inf

    def below(self, db: float) -> List[Dict[str, Any]]:
        return [o for o in self.outputs if o["sqnr_db"] < db]

    def to_dict(self) -> Dict[str, Any]:
        w = self.worst
        return {
            "original": self.original,
            "quantized": self.quantized,
            "inputs": "user" if self.user_inputs else "random",
            "trials": self.trials,
            "seed": self.seed,
            "xnnpack": self.xnnpack,
            "outputs": [dict(o) for o in self.outputs],
            "worst_sqnr_db": self.worst_sqnr_db,
            "worst_output": None if w is None else {"signature": w["signature"], "output": w["output"]},
        }

    def to_json_dict(self) -> Dict[str, Any]:
        return json_safe(self.to_dict())

    def to_model_explorer(self, thresholds: Optional[Sequence[Tuple[float, str]]] = None) -> Dict[str, Any]:
        """Model Explorer's per-node data: each output's SQNR keyed by its tensor name."""
        from ._explorer import validation_node_data

        return validation_node_data(self.to_json_dict(), thresholds)

    def __repr__(self) -> str:
        return f"<tflq.ValidationResult {len(self.outputs)} outputs, worst {self.worst_sqnr_db:.1f} dB>"


def validate(
    original: Union[str, "os.PathLike[str]"],
    quantized: Union[str, "os.PathLike[str]"],
    inputs: Any = None,
    *,
    trials: int = 3,
    seed: int = 0,
    xnnpack: bool = True,
) -> ValidationResult:
    np, _, _ = _deps()
    a, b = os.fspath(original), os.fspath(quantized)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise OptionError(f"trials must be a positive int, not {trials!r}")
    _, ga = _load(a, "original", xnnpack)
    _, gb = _load(b, "quantized", xnnpack)
    if sorted(ga) != sorted(gb):
        raise ValidationError(f"the models have different signatures: original {sorted(ga)}, quantized {sorted(gb)}")
    for key in ga:
        ia = {k: (_shape(d), np.dtype(d["dtype"]).name) for k, d in ga[key].inputs.items()}
        ib = {k: (_shape(d), np.dtype(d["dtype"]).name) for k, d in gb[key].inputs.items()}
        if ia != ib:
            raise ValidationError(f"signature {key!r}: the models' inputs differ: original {ia}, quantized {ib}")
    feeds = random_inputs(ga, trials, seed) if inputs is None else _user_inputs(inputs, ga)
    outputs: List[Dict[str, Any]] = []
    for key in sorted(ga):
        per: Dict[str, List[Dict[str, float]]] = {}
        shapes: Dict[str, List[int]] = {}
        for t, f in enumerate(feeds[key]):
            ref = _run(ga[key], f, "original", a, key)
            got = _run(gb[key], f, "quantized", b, key)
            if sorted(ref) != sorted(got):
                raise ValidationError(f"signature {key!r}: the models' outputs differ: {sorted(ref)} vs {sorted(got)}")
            for name in sorted(ref):
                r, g = ref[name], got[name]
                if r.shape != g.shape:
                    raise ValidationError(f"signature {key!r} output {name!r}: shape {list(r.shape)} in the original, {list(g.shape)} in the quantized model")
                if r.dtype.kind in "fc":
                    fin_r, fin_g = np.isfinite(r), np.isfinite(g)
                    new = fin_r & ~fin_g
                    if new.any():
                        raise ValidationError(
                            f"quantized model {b}: signature {key!r} output {name!r} has {int(new.sum())} NaN/Inf values "
                            f"where the original's are finite (input set {t})"
                        )
                    both = fin_r & fin_g
                    r, g = r[both], g[both]
                per.setdefault(name, []).append(compare(r, g))
                shapes[name] = [int(x) for x in ref[name].shape]
        for name, ms in per.items():
            detail = ga[key].outputs.get(name, {})
            outputs.append(
                {
                    "signature": key,
                    "output": name,
                    "tensor": str(detail.get("name", name)),
                    "shape": shapes[name],
                    "sqnr_db": min(m["sqnr_db"] for m in ms),
                    "max_abs_error": max(m["max_abs_error"] for m in ms),
                    "cosine": min(m["cosine"] for m in ms),
                    "trials": len(ms),
                }
            )
    n = len(next(iter(feeds.values()))) if feeds else 0
    return ValidationResult(a, b, outputs, n, None if inputs is not None else seed, xnnpack, inputs is not None)


def _run(g: _Graph, feeds: InputSet, which: str, path: str, key: str) -> Dict[str, Any]:
    try:
        return g.run(dict(feeds))
    except Exception as e:
        where = f" signature {key!r}" if key else ""
        raise ValidationError(f"{which} model {path}{where}: LiteRT cannot run it: {e}") from e
