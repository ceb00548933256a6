//! The report as Model Explorer's per-node data (`GraphNodeData`): each measured weight's
//! SQNR keyed by its tensor name, with colour thresholds, for
//! `model-explorer MODEL --node_data_paths=FILE`.
//!
//! A result keyed by a tensor name colours the node that outputs that tensor (the weight's
//! constant node, or the DEQUANTIZE that restores it); a node gets the colour of the first
//! threshold (ascending) its value does not exceed.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::Report;

/// The SQNR written for an exactly reconstructed tensor (JSON has no infinity).
pub const EXACT_DB: f64 = 1000.0;

/// Upper bounds in dB and colours: red below 10 dB, through orange and yellow, green above 40.
const THRESHOLDS: [(f64, &str); 5] = [
    (10.0, "#d7191c"),
    (20.0, "#fd8d3c"),
    (30.0, "#fecc5c"),
    (40.0, "#c2e699"),
    (EXACT_DB, "#1a9641"),
];

#[derive(Serialize)]
struct Value {
    value: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Threshold {
    value: f64,
    bg_color: &'static str,
}

#[derive(Serialize)]
struct NodeData<'a> {
    name: &'a str,
    results: BTreeMap<&'a str, Value>,
    thresholds: Vec<Threshold>,
}

/// Writes the node data of one report; a name measured twice keeps its lowest SQNR.
pub fn write_model_explorer(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let mut results: BTreeMap<&str, Value> = BTreeMap::new();
    for r in &report.tensors {
        let v = r.sqnr_db.map_or(EXACT_DB, |db| db.min(EXACT_DB));
        if v.is_nan() {
            continue;
        }
        let e = results.entry(r.name.as_str()).or_insert(Value { value: v });
        e.value = e.value.min(v);
    }
    let data = NodeData {
        name: "tflq weight SQNR (dB)",
        results,
        thresholds: THRESHOLDS
            .iter()
            .map(|&(value, bg_color)| Threshold { value, bg_color })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &data)?;
    writeln!(out)
}
