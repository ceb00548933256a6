//! Writing a [`Report`]: the formats, and the one place that picks the writer of each
//! ([`super::table`], [`super::json`], [`super::csv`], [`super::markdown`], [`super::html`],
//! [`super::model_explorer`]).

use std::io::{self, Write};

use super::Report;
pub use super::cells::sqnr_text;
pub use super::csv::CSV_COLUMNS;

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
    /// The plan the options would use, as `--plan` reads it (JSON).
    Plan,
    /// Model Explorer's per-node data: each weight's SQNR on the graph (JSON).
    ModelExplorer,
}

impl Format {
    /// Every format's name, as the command line spells it.
    pub const NAMES: [&'static str; 7] = [
        "table",
        "json",
        "csv",
        "markdown",
        "html",
        "plan",
        "model-explorer",
    ];

    /// The format called `name` (see [`Format::NAMES`]).
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "table" => Format::Table,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "markdown" | "md" => Format::Markdown,
            "html" => Format::Html,
            "plan" => Format::Plan,
            "model-explorer" => Format::ModelExplorer,
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
        Format::Table => super::table::write_table(report, opts.width, out),
        Format::Json => super::json::write_json(report, out),
        Format::Csv => super::csv::write_csv(report, out),
        Format::Markdown => super::markdown::write_markdown(report, out),
        Format::Html => super::html::write_html(report, opts.plots, out),
        Format::ModelExplorer => super::model_explorer::write_model_explorer(report, out),
        Format::Plan => match &report.plan {
            Some(plan) => {
                serde_json::to_writer_pretty(&mut *out, plan).map_err(io::Error::other)?;
                writeln!(out)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no plan in this report",
            )),
        },
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
            reports
                .iter()
                .try_for_each(|r| super::csv::write_csv_rows(r, out))
        }
        Format::Json => super::json::write_json_array(reports, out),
        Format::Html | Format::Plan | Format::ModelExplorer => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the HTML report, the plan and Model Explorer data take one model; use csv, json, markdown or table for several",
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

#[cfg(test)]
mod tests {
    use super::*;

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
