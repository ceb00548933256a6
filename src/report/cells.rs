//! The cells every report format shares: the text of each value, the summary lines, the
//! columns of the tensor table and the skipped and unmatched lists.

use std::io::{self, Write};

use super::{Report, SkippedRow, TensorRow, Unmatched};
use crate::text::{human, ratio};

/// SQNR for people: two decimals, `exact`, or `-inf`.
pub fn sqnr_text(r: &TensorRow) -> String {
    if r.sqnr.is_finite() {
        format!("{:.2}", r.sqnr)
    } else if r.sqnr > 0.0 {
        "exact".into()
    } else {
        "-inf".into()
    }
}

/// Scale(s) for people.
pub fn scale_text(r: &TensorRow) -> String {
    let s = &r.scheme;
    if s.channels == 0 {
        "-".to_owned() // float16: no scale
    } else if s.scale_min == s.scale_max {
        format!("{:.3e}", s.scale_min)
    } else {
        format!("{:.2e}..{:.2e}", s.scale_min, s.scale_max)
    }
}

/// Zero point(s) for people.
pub fn zero_point_text(r: &TensorRow) -> String {
    let s = &r.scheme;
    if s.channels == 0 {
        "-".to_owned() // float16: no zero point
    } else if s.zero_point_min == s.zero_point_max {
        s.zero_point_min.to_string()
    } else {
        format!("{}..{}", s.zero_point_min, s.zero_point_max)
    }
}

/// Scheme for people, e.g. `tensor`, `channel/0 sym`.
pub fn scheme_text(r: &TensorRow) -> String {
    let s = &r.scheme;
    if s.granularity == "float16" {
        return "float16".to_owned();
    }
    let mut t = match s.axis {
        Some(a) if s.channels > 1 => format!("channel/{a}"),
        _ => "tensor".to_owned(),
    };
    if s.symmetric {
        t.push_str(" sym");
    }
    t
}

/// Distinct operator names reading the tensor.
pub fn ops_text(r: &TensorRow) -> String {
    let mut names: Vec<&str> = Vec::new();
    for c in &r.consumers {
        if !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
    }
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The summary lines shared by the text formats (without a trailing newline each).
pub fn summary_lines(report: &Report) -> Vec<(&'static str, String)> {
    let s = &report.summary;
    let mut lines = Vec::new();
    if let Some(m) = &report.model {
        lines.push(("model", m.clone()));
    }
    if let Some(a) = &report.against {
        lines.push(("against", a.clone()));
    }
    let mut counts = format!("{} measured, {} skipped", s.tensors, s.skipped);
    if report.against.is_some() || s.unmatched > 0 {
        counts.push_str(&format!(", {} unmatched", s.unmatched));
    }
    lines.push(("tensors", counts));
    lines.push((
        "weights",
        format!(
            "{} -> {} ({})",
            human(s.bytes_before),
            human(s.bytes_after),
            ratio(s.bytes_after, s.bytes_before)
        ),
    ));
    if let Some(w) = &s.worst {
        let sqnr = w
            .sqnr_db
            .map_or_else(|| "exact".to_owned(), |d| format!("{d:.2} dB"));
        lines.push((
            "worst",
            format!(
                "{sqnr} SQNR: subgraph {} tensor {} ({})",
                w.subgraph, w.tensor, w.name
            ),
        ));
    }
    for w in &report.warnings {
        lines.push(("warning", w.clone()));
    }
    if let Some(m) = s.mean_sqnr_db {
        let mut t = format!("{m:.2} dB SQNR (element-weighted)");
        if s.exact > 0 {
            let exact = crate::text::count(s.exact, "exact tensor", "exact tensors");
            t.push_str(&format!("; {exact} left out"));
        }
        lines.push(("mean", t));
    }
    let searched: Vec<_> = report.tensors.iter().filter_map(|r| r.range).collect();
    if !searched.is_empty() {
        let gain = searched.iter().map(|r| r.gain_db).fold(0.0, f64::max);
        let clipped = searched.iter().map(|r| r.clipped_share).fold(0.0, f64::max);
        lines.push((
            "range",
            format!(
                "mse in {}: up to {gain:.1} dB over min-max, at most {:.2}% of values clipped",
                crate::text::count(searched.len(), "tensor", "tensors"),
                100.0 * clipped
            ),
        ));
    }
    if let Some(n) = report.equalized_pairs.filter(|&n| n > 0) {
        lines.push((
            "equalized",
            crate::text::count(n, "layer pair", "layer pairs"),
        ));
    }
    lines.push(("measures", report.measures.to_owned()));
    lines
}

/// One column of the table: header, cells, priority (higher: dropped first when too wide).
pub(super) struct Column {
    pub head: &'static str,
    pub cells: Vec<String>,
    pub priority: u8,
    pub right: bool,
}

pub(super) fn columns(report: &Report) -> Vec<Column> {
    let rows = &report.tensors;
    let col = |head, priority, right, f: &dyn Fn(&TensorRow) -> String| Column {
        head,
        cells: rows.iter().map(f).collect(),
        priority,
        right,
    };
    let mut cols = vec![
        col("SQNR dB", 0, true, &sqnr_text),
        col("sg:idx", 1, true, &|r| {
            format!("{}:{}", r.subgraph, r.tensor)
        }),
        col("tensor", 0, false, &|r| r.name.clone()),
        col("ops", 5, false, &ops_text),
        col("elements", 2, true, &|r| r.elements.to_string()),
        col("range", 6, false, &|r| {
            format!("{:.3}..{:.3}", r.min, r.max)
        }),
        col("scheme", 7, false, &scheme_text),
        col("scale", 3, true, &scale_text),
        col("zp", 6, true, &zero_point_text),
        col("max err", 3, true, &|r| format!("{:.3e}", r.max_abs_error)),
        col("RMSE", 4, true, &|r| format!("{:.3e}", r.rmse)),
        col("cosine", 4, true, &|r| format!("{:.6}", r.cosine)),
        col("levels", 3, true, &|r| r.levels_used.to_string()),
        col("edges", 5, true, &|r| {
            format!("{:.2}%", 100.0 * r.clamp_share)
        }),
        col("bytes", 8, true, &|r| {
            format!("{}->{}", human(r.bytes_before), human(r.bytes_after))
        }),
    ];
    if rows.iter().any(|r| r.range.is_some()) {
        cols.push(col("clipped to", 6, false, &|r| {
            r.range.map_or("-".into(), |c| {
                format!(
                    "{:.3}..{:.3} {:.2}% +{:.1}dB",
                    c.lo,
                    c.hi,
                    100.0 * c.clipped_share,
                    c.gain_db
                )
            })
        }));
    }
    if report.against.is_some() || rows.iter().any(|r| r.quantized.is_some()) {
        cols.push(col("matched by", 2, false, &|r| {
            r.quantized
                .as_ref()
                .map_or("-".into(), |q| q.matched_by.key().to_owned())
        }));
    }
    cols
}

/// The skipped and unmatched lists, one line each through `emit`.
pub(super) fn lists(
    report: &Report,
    out: &mut dyn Write,
    emit: impl Fn(&mut dyn Write, String) -> io::Result<()>,
) -> io::Result<()> {
    if !report.skipped.is_empty() {
        emit(out, String::new())?;
        emit(out, format!("skipped ({}):", report.skipped.len()))?;
        for SkippedRow {
            subgraph,
            tensor,
            name,
            detail,
            ..
        } in &report.skipped
        {
            emit(out, format!("  {subgraph}:{tensor} {name}: {detail}"))?;
        }
    }
    if !report.unmatched.is_empty() {
        emit(out, String::new())?;
        emit(out, format!("unmatched ({}):", report.unmatched.len()))?;
        for Unmatched {
            subgraph,
            tensor,
            name,
            dtype,
            reason,
        } in &report.unmatched
        {
            emit(
                out,
                format!("  {subgraph}:{tensor} {name} ({dtype}): {reason}"),
            )?;
        }
    }
    Ok(())
}
