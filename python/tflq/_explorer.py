"""Model Explorer's per-node data (``GraphNodeData``) for tflq's reports.

The JSON is what Model Explorer's ``--node_data_paths`` reads for one graph::

    {"name": ..., "results": {TENSOR_NAME: {"value": NUMBER}, ...},
     "thresholds": [{"value": NUMBER, "bgColor": CSS_COLOUR}, ...]}

A result keyed by a tensor name colours the node that outputs that tensor (a weight's
constant node, or the DEQUANTIZE that restores it). A node with a value <= a threshold's
value gets the colour of the first such threshold (they are sorted ascending).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

#: SQNR shown for tensors reconstructed exactly (JSON has no infinity).
EXACT_DB = 1000.0

#: Upper bounds in dB and colours: red below 10 dB, through orange and yellow, green above 40.
DEFAULT_THRESHOLDS: Tuple[Tuple[float, str], ...] = (
    (10.0, "#d7191c"),
    (20.0, "#fd8d3c"),
    (30.0, "#fecc5c"),
    (40.0, "#c2e699"),
    (EXACT_DB, "#1a9641"),
)


def node_data(
    name: str,
    values: Iterable[Tuple[str, Optional[float]]],
    thresholds: Optional[Sequence[Tuple[float, str]]] = None,
) -> Dict[str, Any]:
    """A GraphNodeData object: ``values`` are (tensor name, dB or None for exact); a name seen
    twice keeps its lowest value."""
    results: Dict[str, Dict[str, float]] = {}
    for tensor, db in values:
        v = EXACT_DB if db is None else min(float(db), EXACT_DB)
        if v != v:  # NaN
            continue
        if tensor not in results or v < results[tensor]["value"]:
            results[tensor] = {"value": v}
    items = sorted(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    return {
        "name": name,
        "results": results,
        "thresholds": [{"value": float(v), "bgColor": str(c)} for v, c in items],
    }


def report_node_data(report: Dict[str, Any], thresholds: Optional[Sequence[Tuple[float, str]]] = None) -> Dict[str, Any]:
    """Node data of a report (``Report.to_dict()``): each measured weight's SQNR."""
    rows = report.get("tensors", [])
    return node_data("tflq weight SQNR (dB)", ((r["name"], r["sqnr_db"]) for r in rows), thresholds)


def validation_node_data(result: Dict[str, Any], thresholds: Optional[Sequence[Tuple[float, str]]] = None) -> Dict[str, Any]:
    """Node data of a validation (``ValidationResult.to_dict()``): each output's SQNR, keyed
    by the output tensor's name."""
    outs: List[Tuple[str, Optional[float]]] = []
    for o in result.get("outputs", []):
        outs.append((o["tensor"], o["sqnr_db"]))
    return node_data("tflq output SQNR (dB)", outs, thresholds)
