//! The report as GitHub-flavoured Markdown: the summary as a list, the tensors as a table.

use std::io::{self, Write};

use super::Report;
use super::cells::{columns, lists, summary_lines};

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn write_markdown(report: &Report, out: &mut dyn Write) -> io::Result<()> {
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
