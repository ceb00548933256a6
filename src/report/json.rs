//! The report as JSON: the whole [`Report`] as serialised, one object per model.

use std::io::{self, Write};

use super::Report;

/// Writes one report as a pretty-printed JSON object and a newline.
pub fn write_json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

/// Writes several reports as one pretty-printed JSON array and a newline.
pub fn write_json_array(reports: &[Report], out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, reports)?;
    writeln!(out)
}
