"""tflq: quantize the float32 weights of TensorFlow Lite models (int8, int4, int2 or float16).

The same tool as the ``tflq`` command, as a library::

    import tflq
    summary = tflq.quantize("model.tflite", "model.int8.tflite", mode="dynamic")
    print(summary.worst_sqnr_db, summary.to_dict()["output_bytes"])
    report = tflq.report("model.tflite")            # what int8 costs each weight tensor
    result = tflq.validate("model.tflite", "model.int8.tflite")  # outputs, in LiteRT

Errors are exceptions of one family, :class:`tflq.Error`: :class:`tflq.ModelError` (also a
``ValueError``) for a bad model, its message naming the file and, where known, the tensor;
:class:`tflq.OptionError` (a ``ValueError``) for a bad option value; :class:`tflq.FileError`
(an ``OSError``, with subclasses that are also ``FileNotFoundError``, ``PermissionError``,
``IsADirectoryError``, ...) for files. The work runs without the GIL; Ctrl-C raises
``KeyboardInterrupt`` and leaves no partial output.
"""

from __future__ import annotations

import csv as _csv
import io as _io
import json as _json
import os as _os
import sys as _sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _tflq
from ._errors import (
    AlreadyExistsError,
    BatchError,
    ChangedError,
    DirectoryError,
    Error,
    FileError,
    ModelError,
    NotADirectoryError_,
    NotARegularFileError,
    NotFoundError,
    OptionError,
    PermissionDeniedError,
    SameFileError,
    ValidationError,
)

__version__: str = _tflq.__version__

PathLike = Union[str, "_os.PathLike[str]"]

__all__ = [
    "AlreadyExistsError",
    "BatchError",
    "BatchSummary",
    "ChangedError",
    "DirectoryError",
    "Error",
    "FileError",
    "ModelError",
    "NotADirectoryError_",
    "NotARegularFileError",
    "NotFoundError",
    "OptionError",
    "PermissionDeniedError",
    "Report",
    "SameFileError",
    "Summary",
    "ValidationError",
    "ValidationResult",
    "inspect",
    "quantize",
    "quantize_bytes",
    "quantize_dir",
    "report",
    "tune",
    "validate",
]

_DEFAULTS: Dict[str, Any] = {
    "min_elements": 1024,
    "mode": "weight-only",
    "granularity": "per-tensor",
    "symmetric": False,
    "weight_type": "int8",
    "include_ops": [],
    "exclude_ops": [],
    "exclude_tensors": None,
    "quantize_biases": False,
    "range": "minmax",
    "equalize": True,
    "block_size": 32,
    "target": "litert",
    "layout": "auto",
    "plan": None,
}


def _options(where: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """Checks the keyword options' names and types and fills in the defaults."""
    opts = dict(_DEFAULTS)
    given = dict(given)
    if "type" in given:
        if "weight_type" in given:
            raise TypeError(f"{where}() got both 'type' and 'weight_type' (the same option)")
        given["weight_type"] = given.pop("type")
    for key, value in given.items():
        if key not in opts:
            known = ", ".join(sorted([*opts, "type"]))
            raise TypeError(f"{where}() got an unexpected keyword argument {key!r} (options: {known})")
        if key in ("include_ops", "exclude_ops"):
            if value is None:
                value = []
            elif isinstance(value, str):
                value = [value]
            else:
                value = [str(v) for v in value]
        elif key in ("min_elements", "block_size"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an int, not {type(value).__name__}")
            if value < 0:
                raise OptionError(f"{key} must be >= 0, not {value}")
        elif key in ("symmetric", "quantize_biases", "equalize"):
            value = bool(value)
        elif key == "plan":
            if isinstance(value, dict):
                value = _json.dumps(value)
            elif value is not None and not isinstance(value, str):
                raise TypeError(f"plan must be a dict or JSON text, not {type(value).__name__}")
        elif key == "exclude_tensors":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"exclude_tensors must be a str, not {type(value).__name__}")
        elif not isinstance(value, str):
            raise TypeError(f"{key} must be a str, not {type(value).__name__}")
        opts[key] = value
    return opts


_OPTIONS_DOC = """

Quantization options (keyword arguments of :func:`quantize`, :func:`quantize_bytes`,
:func:`quantize_dir` and :func:`report`, named after the command's flags):

min_elements : int, default 1024
    Leave float32 tensors with fewer elements than this in float (0: quantize all).
mode : {"weight-only", "dynamic"}, default "weight-only"
    ``weight-only``: every quantized weight goes through a DEQUANTIZE operator (works for
    every op). ``dynamic``: ops with hybrid int8 kernels (FULLY_CONNECTED, CONV_2D,
    DEPTHWISE_CONV_2D, BATCH_MATMUL, EMBEDDING_LOOKUP, LSTM, SVDF, RNN, ...) read the int8
    weights directly: less memory and faster at run time; weights are symmetric.
granularity : {"per-tensor", "per-channel", "block"}, default "per-tensor"
    One scale per tensor, or one per output channel on the axis each op expects (falling
    back to per-tensor where the op or runtime cannot take it).
symmetric : bool, default False
    Symmetric int8 (zero point 0, codes in [-127, 127]) in weight-only mode too.
type, weight_type : {"int8", "int4", "int2", "float16"}, default "int8"
    Storage type of the quantized weights (``float16``: half floats behind DEQUANTIZE;
    values beyond +-65504 are clamped, with a warning). ``type`` is the flag's name,
    ``weight_type`` the same option under a name that is not a Python builtin.
include_ops : str or list of str, optional
    Only quantize weights read solely by these ops (builtin names such as
    "FULLY_CONNECTED"; a list or one comma-separated string).
exclude_ops : str or list of str, optional
    Leave weights read by any of these ops in float.
exclude_tensors : str, optional
    Leave weights whose tensor name matches this regular expression in float.
layout : {"auto", "external"}, default "auto"
    ``auto``: weight data inline, or after the flatbuffer with offset/size when the file
    would pass 2 GiB; ``external``: always after the flatbuffer.

Underscores and dashes are interchangeable in the values ("per_channel" = "per-channel").
"""

# The module's help lists the options once, from the same text as the functions' help.
__doc__ = (__doc__ or "") + _OPTIONS_DOC



def _with_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Appends the quantization options to ``f``'s docstring, so ``help(f)`` lists them."""
    f.__doc__ = (f.__doc__ or "").rstrip() + "\n" + _OPTIONS_DOC.replace("\n", "\n    ")
    return f


def _path(p: PathLike, what: str) -> str:
    try:
        return _os.fspath(p)
    except TypeError:
        raise TypeError(f"{what} must be a str or os.PathLike, not {type(p).__name__}") from None


class Summary:
    """What one quantization did: the command's ``--json`` object.

    ``to_dict()`` is exactly the object ``tflq quantize INPUT -o OUTPUT --json`` prints
    (``quantize_bytes``: the same without ``input`` and ``output``). Attributes give its
    main fields: ``quantized`` and ``skipped`` (lists of dicts), ``changed``,
    ``input_bytes``, ``output_bytes``, ``worst_sqnr_db`` (the lowest SQNR of any quantized
    tensor, ``None`` when none or all exact), ``warnings``.
    """

    def __init__(self, data: Dict[str, Any]):
        self._data = data

    def to_dict(self) -> Dict[str, Any]:
        """The ``--json`` object (a fresh copy)."""
        return _json.loads(_json.dumps(self._data))

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("_data", {})
        if name in data:
            return data[name]
        raise AttributeError(name)

    @property
    def worst_sqnr_db(self) -> Optional[float]:
        """The lowest weight SQNR of the quantized tensors in dB (``None``: none, or exact)."""
        values = [t["sqnr_db"] for t in self._data.get("quantized", []) if t.get("sqnr_db") is not None]
        return min(values) if values else None

    def __repr__(self) -> str:
        d = self._data
        return (
            f"<tflq.Summary {len(d.get('quantized', []))} quantized, "
            f"{len(d.get('skipped', []))} skipped, {d.get('input_bytes')} -> {d.get('output_bytes')} bytes>"
        )


@_with_options
def quantize(
    input: PathLike, output: PathLike, *, in_place: bool = False, fsync: bool = True, **options: Any
) -> Summary:
    """Quantizes the model file ``input`` into ``output``; returns its :class:`Summary`.

    The output is written atomically (complete or not at all, also on Ctrl-C or an error);
    the input is never modified. An ``output`` that names ``input`` (also through a link) is
    refused with :class:`tflq.SameFileError` unless ``in_place=True``. The output is on disk
    before it gets its name; ``fsync=False`` names it as soon as it is complete instead
    (``--no-fsync``: faster on a slow disk, but a crash of the machine soon after may leave
    it empty or partial). ``options``: the
    quantization options in the module's docstring (``help(tflq)``): ``min_elements``,
    ``mode``, ``granularity``, ``symmetric``, ``type``/``weight_type``, ``include_ops``,
    ``exclude_ops``, ``exclude_tensors``, ``layout``.

    Same as ``tflq quantize INPUT -o OUTPUT [flags] --json``.
    """
    opts = _options("quantize", options)
    text = _tflq.quantize_file(
        _path(input, "input"), _path(output, "output"), opts, bool(in_place), bool(fsync)
    )
    return Summary(_json.loads(text))


@_with_options
def quantize_bytes(data: Union[bytes, bytearray, memoryview], **options: Any) -> Tuple[bytes, Summary]:
    """Quantizes the model held in ``data``; returns the new model's bytes and the summary.

    When nothing qualifies, the bytes are the input's, unchanged. ``options`` as for
    :func:`quantize` (``help(tflq)`` lists them). Errors in the model raise
    :class:`tflq.ModelError` (no file name: the message names the tensor).
    """
    opts = _options("quantize_bytes", options)
    if not isinstance(data, bytes):
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
    out, text = _tflq.quantize_bytes(data, opts)
    return out, Summary(_json.loads(text))


class BatchSummary:
    """What :func:`quantize_dir` did: the JSON lines of ``tflq quantize DIR... -o OUT --json``.

    ``files``: one dict per file (``kind`` "model" or "other"; ``status``; sizes; worst
    SQNR; ``error``); ``problems``: folders or links that could not be read; ``totals``: the
    last line (counts, bytes, ``stopped``...). ``ok`` is true when nothing failed.
    """

    def __init__(self, lines: List[Dict[str, Any]]):
        self.files = [line for line in lines if line.get("kind") in ("model", "other")]
        self.problems = [line for line in lines if line.get("kind") == "problem"]
        totals = [line for line in lines if line.get("kind") == "totals"]
        self.totals: Dict[str, Any] = totals[-1] if totals else {}
        self._lines = lines

    @property
    def ok(self) -> bool:
        return self.totals.get("errors", 0) == 0

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [f for f in self.files if f.get("status") == "failed"]

    def to_list(self) -> List[Dict[str, Any]]:
        """Every JSON line, in order (files, problems, totals)."""
        return _json.loads(_json.dumps(self._lines))

    def __repr__(self) -> str:
        t = self.totals
        return f"<tflq.BatchSummary {t.get('models')} models, {t.get('quantized')} quantized, {t.get('errors')} errors>"


def _print_progress(done: int, total: int, path: str, status: str, error: Optional[str], warnings: List[str]) -> None:
    line = f"[{done}/{total}] {status}: {path}"
    if error:
        line += f": {error}"
    print(line, file=_sys.stderr, flush=True)
    for w in warnings:
        print(f"tflq: warning: {path}: {w}", file=_sys.stderr, flush=True)


ProgressCallback = Callable[[int, int, str, str, Optional[str], List[str]], Any]


@_with_options
def quantize_dir(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    jobs: Optional[int] = None,
    progress: Union[bool, ProgressCallback] = True,
    *,
    in_place: bool = False,
    fsync: bool = True,
    skip_existing: bool = False,
    dry_run: bool = False,
    copy_others: bool = False,
    shard: Optional[str] = None,
    **options: Any,
) -> BatchSummary:
    """Quantizes every ``.tflite`` under ``inputs`` (files and folders) into the folder ``output``.

    Each model goes to its relative path under ``output`` (relative to the deepest folder
    holding all the inputs), ``jobs`` at a time (default: two per core). A model that fails
    is reported in the result (``status`` "failed", ``error``) and the others go on.

    progress : bool or callable
        True: a line on stderr as each file finishes. A callable is called on the calling
        thread as ``progress(done, total, path, status, error, warnings)``; an exception it
        raises stops the batch (no partial file is left) and propagates.
    in_place, skip_existing, dry_run, copy_others, shard :
        As the flags ``--in-place``, ``--skip-existing``, ``--dry-run``, ``--copy-others``,
        ``--shard K/N``.
    fsync :
        False: as ``--no-fsync`` (each output named as soon as it is complete, without
        waiting for the disk), as for :func:`quantize`.
    options :
        The quantization options of :func:`quantize` (``help(tflq)``).

    Same as ``tflq quantize INPUT... -o OUTPUT [flags] --json``; Ctrl-C stops the batch, removes
    the file being written and raises ``KeyboardInterrupt``.
    """
    opts = _options("quantize_dir", options)
    if isinstance(inputs, (str, bytes)) or hasattr(inputs, "__fspath__"):
        inputs = [inputs]  # type: ignore[list-item]
    paths = [_path(p, "inputs") for p in inputs]  # type: ignore[union-attr]
    if not paths:
        raise OptionError("quantize_dir: no inputs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise OptionError(f"jobs must be a positive int or None, not {jobs!r}")
    callback: Optional[ProgressCallback]
    if progress is True:
        callback = _print_progress
    elif progress is False or progress is None:
        callback = None
    elif callable(progress):
        callback = progress
    else:
        raise TypeError("progress must be a bool or a callable")
    text = _tflq.quantize_dir(
        paths,
        _path(output, "output"),
        opts,
        jobs or 0,
        bool(in_place),
        bool(fsync),
        bool(skip_existing),
        bool(dry_run),
        bool(copy_others),
        shard,
        callback,
    )
    return BatchSummary([_json.loads(line) for line in text.splitlines() if line.strip()])


class Report:
    """A quantization-error report of one model (``tflq report``).

    ``tensors``: one dict per measured weight tensor, worst first (``name``, ``sqnr_db``,
    ``max_abs_error``, ``rmse``, ``cosine``, ``levels_used``, ``clamp_share``, ``scheme``,
    ``consumers``, bytes...); ``skipped``: constant tensors not measured, with the reason;
    ``summary``: totals and the worst tensor. ``to_dict()`` is the ``--format json``
    document; ``to_csv()``, ``to_html()``, ``to_markdown()``, ``to_table()`` the other
    formats, byte for byte as the command writes them; ``to_model_explorer()`` Model
    Explorer's per-node data.
    """

    def __init__(self, native: Any, histograms: bool):
        self._native = native
        self._histograms = histograms
        self._data: Dict[str, Any] = _json.loads(native.json())

    @property
    def tensors(self) -> List[Dict[str, Any]]:
        return self._data["tensors"]

    @property
    def skipped(self) -> List[Dict[str, Any]]:
        return self._data["skipped"]

    @property
    def summary(self) -> Dict[str, Any]:
        return self._data["summary"]

    @property
    def warnings(self) -> List[str]:
        return self._data["warnings"]

    def below(self, db: float) -> List[Dict[str, Any]]:
        """Tensors whose SQNR is below ``db`` (exact tensors never are)."""
        return [t for t in self.tensors if t["sqnr_db"] is not None and t["sqnr_db"] < db]

    def to_dict(self) -> Dict[str, Any]:
        """The ``tflq report --format json`` document (a fresh copy)."""
        return _json.loads(_json.dumps(self._data))

    def to_json(self) -> str:
        return self._native.render("json", 120, 12)

    def to_csv(self) -> str:
        """The ``--format csv`` table."""
        return self._native.render("csv", 120, 12)

    def to_markdown(self) -> str:
        return self._native.render("markdown", 120, 12)

    def to_table(self, width: int = 120) -> str:
        """The text table the command prints, ``width`` columns wide."""
        return self._native.render("table", width, 12)

    def to_html(self, plots: int = 12) -> str:
        """The self-contained HTML page (``--format html``), with plots of the ``plots`` worst
        tensors (the report must have been made with ``histograms=True``, the default)."""
        return self._native.render("html", 120, plots)

    def rows(self) -> List[Dict[str, str]]:
        """The CSV table as a list of dicts of strings (column -> cell)."""
        return list(_csv.DictReader(_io.StringIO(self.to_csv())))

    def to_model_explorer(self, thresholds: Optional[Sequence[Tuple[float, str]]] = None) -> Dict[str, Any]:
        """Model Explorer's per-node data (a ``GraphNodeData`` object): every measured weight's
        SQNR in dB keyed by tensor name, with colour thresholds. Save it with ``json.dump`` and
        open it with ``model-explorer MODEL --node_data_paths=FILE.json``."""
        from ._explorer import report_node_data

        return report_node_data(self._data, thresholds)

    def __repr__(self) -> str:
        s = self.summary
        worst = s.get("worst") or {}
        return f"<tflq.Report {s.get('tensors')} tensors, worst {worst.get('sqnr_db')} dB ({worst.get('name')})>"


@_with_options
def report(model: PathLike, against: Optional[PathLike] = None, *, histograms: bool = True, **options: Any) -> Report:
    """Measures what quantization costs each weight tensor of ``model``.

    Without ``against``: each tensor :func:`quantize` would quantize with the same options is
    quantized in memory (nothing is written) and measured. With ``against``: the quantized
    model ``against`` (made by any tool) is measured from its real int8 data, each tensor
    matched with its float original in ``model`` (the options are then ignored).

    Metrics per tensor: max |x - x'|, RMSE, SQNR = 10 log10(sum x^2 / sum (x - x')^2) dB,
    cosine similarity, int8 levels used, share of values at the ends of the code range,
    bytes before and after. ``histograms`` keeps what ``to_html()`` plots. ``options``: the
    quantization options of :func:`quantize` (``help(tflq)``).

    Same as ``tflq report MODEL [--against QUANTIZED] [flags] --format json``.
    """
    opts = _options("report", options)
    q = _path(against, "against") if against is not None else None
    native = _tflq.report(_path(model, "model"), q, opts, bool(histograms))
    return Report(native, bool(histograms))


def inspect(model: PathLike) -> Dict[str, Any]:
    """What the model holds (layout, metadata, signatures, operators, every constant tensor
    and its quantization), as the dict ``tflq inspect MODEL --json`` prints."""
    return _json.loads(_tflq.inspect(_path(model, "model")))


def __getattr__(name: str) -> Any:
    # tflq.validate and its result class need numpy and ai-edge-litert: imported on first use.
    if name in ("validate", "ValidationResult"):
        from . import _validate

        return getattr(_validate, name)
    if name == "TuneResult":
        from . import _tune

        return _tune.TuneResult
    raise AttributeError(f"module 'tflq' has no attribute {name!r}")


def tune(
    original: PathLike,
    output: PathLike,
    *,
    target_sqnr: float = 30.0,
    inputs: Any = None,
    holdout: float = 0.3,
    time_budget_s: Optional[float] = None,
    seed: int = 0,
    xnnpack: bool = True,
) -> Any:
    """Writes to ``output`` the smallest model (a per-tensor plan of int4 per-channel, int8
    per-channel and float16 weights) whose worst output SQNR in LiteRT meets ``target_sqnr``
    on the inputs used for choosing, and its plan next to it (``output`` without extension +
    ``.plan.json``, as ``tflq quantize --plan`` reads it). ``inputs`` as for :func:`validate`
    (None: 10 seeded random sets); ``holdout``: the share of the sets kept out of the choice
    and measured after it. Returns a ``TuneResult`` with both figures (``choosing_sqnr_db``,
    ``holdout_sqnr_db``), the sizes and figures of the uniform schemes, the time taken and
    the LiteRT invocations used. Needs ``pip install 'tflq[validate]'``.
    """
    from . import _tune

    return _tune.tune(
        original,
        output,
        target_sqnr=target_sqnr,
        inputs=inputs,
        holdout=holdout,
        time_budget_s=time_budget_s,
        seed=seed,
        xnnpack=xnnpack,
    )


def validate(  # noqa: F811 - documented here, implemented in tflq._validate
    original: PathLike,
    quantized: PathLike,
    inputs: Any = None,
    *,
    trials: int = 3,
    seed: int = 0,
    xnnpack: bool = True,
) -> "ValidationResult":
    """Runs ``original`` and ``quantized`` in LiteRT on the same inputs and compares outputs.

    Needs ``pip install 'tflq[validate]'`` (ai-edge-litert and numpy). Every signature of the
    models is run (or the default graph when they have none). ``inputs``: None (``trials``
    sets of seeded random values fitting each input's dtype and shape; dynamic dimensions,
    -1 in ``shape_signature``, are resized to 1), a dict of arrays (one set, keyed by input
    name; with several signatures: by ``"signature/input"`` or a dict of dicts keyed by
    signature), a list of such dicts, or the path of an ``.npz`` file (keys as for a dict;
    arrays with a leading trial axis are not split: one file is one set).

    Returns a :class:`ValidationResult`: per output SQNR in dB (the worst over the trials),
    max abs error, cosine similarity, and ``worst_sqnr_db`` over all outputs
    (``to_dict()["worst_sqnr_db"]``). Raises :class:`tflq.ValidationError` when a model fails
    to load or run (naming which) or the quantized model gives NaN/Inf where the original did
    not.
    """
    from . import _validate

    return _validate.validate(original, quantized, inputs, trials=trials, seed=seed, xnnpack=xnnpack)
