//! Writing a [`Report`]: an aligned table that fits a width, JSON, CSV, Markdown or HTML.
//!
//! The CSV has one row per measured tensor and a stable column order ([`CSV_COLUMNS`],
//! documented in `docs/report.md`); `model` comes first, so that reports of several models
//! concatenate into one file.

use std::io::{self, Write};

use super::{Report, SkippedRow, TensorRow, Unmatched};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// The whole report as JSON.
    Json,
    /// One row per tensor.
    Csv,
    /// GitHub-flavoured Markdown.
    Markdown,
    /// One self-contained page with plots.
    Html,
}

impl Format {
    /// Every format's name, as the command line spells it.
    pub const NAMES: [&'static str; 5] = ["table", "json", "csv", "markdown", "html"];

    /// The format called `name` (see [`Format::NAMES`]).
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "table" => Format::Table,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "markdown" | "md" => Format::Markdown,
            "html" => Format::Html,
            _ => return None,
        })
    }

    /// The format a file name's extension suggests (`.json`, `.csv`, `.md`, `.html`/`.htm`).
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "htm" => Some(Format::Html),
            "txt" => Some(Format::Table),
            e => Format::from_name(e).filter(|f| *f != Format::Table),
        }
    }
}

/// Layout choices of the formats.
#[derive(Debug, Clone, Copy)]
pub struct FormatOptions {
    /// Width the table must fit in (table format).
    pub width: usize,
    /// Worst tensors that get plots (HTML).
    pub plots: usize,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            width: 120,
            plots: 12,
        }
    }
}

/// Writes `report` to `out` in `format`.
pub fn write_report(
    report: &Report,
    format: Format,
    opts: &FormatOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Table => table(report, opts.width, out),
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)
        }
        Format::Csv => csv(report, out),
        Format::Markdown => markdown(report, out),
        Format::Html => super::html::write_html(report, opts.plots, out),
    }
}

/// Writes the reports of several models to `out` as one document: one CSV table (the
/// `model` column tells the rows apart), a JSON array, or the table/Markdown reports one
/// after another. HTML takes one model at a time.
pub fn write_reports(
    reports: &[Report],
    format: Format,
    opts: &FormatOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Csv => {
            writeln!(out, "{}", CSV_COLUMNS.join(","))?;
            reports.iter().try_for_each(|r| csv_rows(r, out))
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, reports)?;
            writeln!(out)
        }
        Format::Html => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the HTML report takes one model; use csv, json, markdown or table for several",
        )),
        Format::Table | Format::Markdown => {
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                write_report(r, format, opts, out)?;
            }
            Ok(())
        }
    }
}

/// `1.5 KiB` style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

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

fn ratio(after: u64, before: u64) -> String {
    if before == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * after as f64 / before as f64)
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
            t.push_str(&format!("; {} exact tensors left out", s.exact));
        }
        lines.push(("mean", t));
    }
    lines
}

/// One column of the table: header, cells, priority (higher: dropped first when too wide).
struct Column {
    head: &'static str,
    cells: Vec<String>,
    priority: u8,
    right: bool,
}

fn columns(report: &Report) -> Vec<Column> {
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
    if report.against.is_some() || rows.iter().any(|r| r.quantized.is_some()) {
        cols.push(col("matched by", 2, false, &|r| {
            r.quantized
                .as_ref()
                .map_or("-".into(), |q| q.matched_by.key().to_owned())
        }));
    }
    cols
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// Shortens `s` to `max` characters, keeping both ends (names differ at their ends).
fn shorten(s: &str, max: usize) -> String {
    let n = width_of(s);
    if n <= max || max < 5 {
        return s.to_owned();
    }
    let keep = max - 1;
    let head = keep / 3;
    let tail = keep - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

/// Narrowest the name column gets before other columns go.
const MIN_NAME: usize = 24;
const GAP: usize = 2;

fn table(report: &Report, width: usize, out: &mut dyn Write) -> io::Result<()> {
    for (k, v) in summary_lines(report) {
        writeln!(out, "{:<9} {v}", format!("{k}:"))?;
    }
    if !report.tensors.is_empty() {
        writeln!(out)?;
        let mut cols = columns(report);
        let natural = |c: &Column| {
            c.cells
                .iter()
                .map(|s| width_of(s))
                .chain([width_of(c.head)])
                .max()
                .unwrap_or(0)
        };
        let total = |cols: &[Column], name_w: usize| -> usize {
            cols.iter()
                .map(|c| {
                    if c.head == "tensor" {
                        name_w
                    } else {
                        natural(c)
                    }
                })
                .sum::<usize>()
                + GAP * cols.len().saturating_sub(1)
        };
        let name_natural = cols.iter().find(|c| c.head == "tensor").map_or(0, natural);
        let mut name_w = name_natural;
        loop {
            if total(&cols, name_w) <= width {
                break;
            }
            // Shrink the name down to MIN_NAME first, then drop the least important column.
            let others = total(&cols, 0);
            if name_w > MIN_NAME {
                name_w = width.saturating_sub(others).clamp(MIN_NAME, name_w);
                if total(&cols, name_w) <= width {
                    break;
                }
            }
            let worst = cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.priority > 0)
                .max_by_key(|(i, c)| (c.priority, *i))
                .map(|(i, _)| i);
            match worst {
                Some(i) => {
                    cols.remove(i);
                    name_w = name_natural.min(width.saturating_sub(total(&cols, 0)).max(MIN_NAME));
                }
                None => break,
            }
        }
        let widths: Vec<usize> = cols
            .iter()
            .map(|c| {
                if c.head == "tensor" {
                    name_w
                } else {
                    natural(c)
                }
            })
            .collect();
        let line = |cells: Vec<String>| {
            let mut s = String::new();
            for (i, (cell, (c, &w))) in cells.iter().zip(cols.iter().zip(&widths)).enumerate() {
                if i > 0 {
                    s.push_str(&" ".repeat(GAP));
                }
                let pad = w.saturating_sub(width_of(cell));
                let last = i + 1 == cols.len();
                if c.right {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                } else {
                    s.push_str(cell);
                    if !last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
            s
        };
        writeln!(
            out,
            "{}",
            line(cols.iter().map(|c| c.head.to_owned()).collect())
        )?;
        for r in 0..report.tensors.len() {
            let cells = cols
                .iter()
                .zip(&widths)
                .map(|(c, &w)| {
                    if c.head == "tensor" {
                        shorten(&c.cells[r], w)
                    } else {
                        c.cells[r].clone()
                    }
                })
                .collect();
            writeln!(out, "{}", line(cells))?;
        }
    }
    lists(report, out, |out, s| writeln!(out, "{s}"))
}

/// The skipped and unmatched lists, one line each through `emit`.
fn lists(
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

fn csv(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    csv_rows(report, out)
}

/// The rows of one report, without the header (several reports share one table).
fn csv_rows(report: &Report, out: &mut dyn Write) -> io::Result<()> {
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

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "# Quantization error report\n")?;
    for (k, v) in summary_lines(report) {
        writeln!(out, "- **{k}**: {}", md_cell(&v))?;
    }
    if !report.tensors.is_empty() {
        let cols = columns(report);
        writeln!(out)?;
        let heads: Vec<&str> = cols.iter().map(|c| c.head).collect();
        writeln!(out, "| {} |", heads.join(" | "))?;
        let rule: Vec<&str> = cols
            .iter()
            .map(|c| if c.right { "---:" } else { "---" })
            .collect();
        writeln!(out, "| {} |", rule.join(" | "))?;
        for r in 0..report.tensors.len() {
            let cells: Vec<String> = cols.iter().map(|c| md_cell(&c.cells[r])).collect();
            writeln!(out, "| {} |", cells.join(" | "))?;
        }
    }
    lists(report, out, |out, s| {
        if s.is_empty() {
            writeln!(out)
        } else if s.starts_with("  ") {
            writeln!(out, "- {}", md_cell(s.trim_start()))
        } else {
            writeln!(out, "**{s}**\n")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shortened_in_the_middle() {
        assert_eq!(shorten("short", 10), "short");
        let s = shorten("model/layer_12/attention/query/kernel", 20);
        assert_eq!(s.chars().count(), 20);
        assert!(
            s.starts_with("model/") && s.ends_with("query/kernel"),
            "{s}"
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a;b"), "a;b");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_float(f64::INFINITY), "inf");
        assert_eq!(csv_float(0.25), "0.25");
    }

    #[test]
    fn formats_are_named_and_guessed_from_extensions() {
        for n in Format::NAMES {
            assert!(Format::from_name(n).is_some(), "{n}");
        }
        let p = |s: &str| Format::from_path(std::path::Path::new(s));
        assert_eq!(p("r.HTML"), Some(Format::Html));
        assert_eq!(p("r.md"), Some(Format::Markdown));
        assert_eq!(p("r.csv"), Some(Format::Csv));
        assert_eq!(p("r.txt"), Some(Format::Table));
        assert_eq!(p("r.table"), None);
        assert_eq!(p("r"), None);
    }
}
