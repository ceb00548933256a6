//! The report as CSV: one row per measured tensor and a stable column order
//! ([`CSV_COLUMNS`], documented in `docs/report.md`); `model` comes first, so that reports of
//! several models concatenate into one file.

use std::io::{self, Write};

use super::Report;

/// Column order of the CSV; documented in `docs/report.md`. Only ever append to it.
pub const CSV_COLUMNS: [&str; 30] = [
    "model",
    "subgraph",
    "tensor",
    "name",
    "buffer",
    "shape",
    "consumers",
    "elements",
    "min",
    "max",
    "granularity",
    "symmetric",
    "axis",
    "channels",
    "scale_min",
    "scale_max",
    "zero_point_min",
    "zero_point_max",
    "max_abs_error",
    "rmse",
    "sqnr_db",
    "cosine",
    "levels_used",
    "clamp_share",
    "bytes_before",
    "bytes_after",
    "matched_by",
    "quantized_subgraph",
    "quantized_tensor",
    "quantized_name",
];

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `inf`/`-inf` for infinite SQNR; shortest round-trip text for the rest.
fn csv_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        v.to_string()
    }
}

pub fn write_csv(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    write_csv_rows(report, out)
}

/// The rows of one report, without the header (several reports share one table).
pub fn write_csv_rows(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let model = report.model.clone().unwrap_or_default();
    for r in &report.tensors {
        let s = &r.scheme;
        let q = r.quantized.as_ref();
        let shape: Vec<String> = r.shape.iter().map(i32::to_string).collect();
        let consumers: Vec<String> = r
            .consumers
            .iter()
            .map(|c| format!("{}@{}:{}", c.name, c.op, c.input))
            .collect();
        let fields = [
            model.clone(),
            r.subgraph.to_string(),
            r.tensor.to_string(),
            r.name.clone(),
            r.buffer.to_string(),
            shape.join("x"),
            consumers.join(";"),
            r.elements.to_string(),
            r.min.to_string(),
            r.max.to_string(),
            s.granularity.to_owned(),
            s.symmetric.to_string(),
            s.axis.map_or(String::new(), |a| a.to_string()),
            s.channels.to_string(),
            s.scale_min.to_string(),
            s.scale_max.to_string(),
            s.zero_point_min.to_string(),
            s.zero_point_max.to_string(),
            csv_float(r.max_abs_error),
            csv_float(r.rmse),
            csv_float(r.sqnr),
            csv_float(r.cosine),
            r.levels_used.to_string(),
            csv_float(r.clamp_share),
            r.bytes_before.to_string(),
            r.bytes_after.to_string(),
            q.map_or(String::new(), |q| q.matched_by.key().to_owned()),
            q.map_or(String::new(), |q| q.subgraph.to_string()),
            q.map_or(String::new(), |q| q.tensor.to_string()),
            q.map_or(String::new(), |q| q.name.clone()),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a;b"), "a;b");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_float(f64::INFINITY), "inf");
        assert_eq!(csv_float(0.25), "0.25");
    }
}
