//! `tflq quantize DIR... -o OUT`: the batch mode's progress bar, messages and summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::batch::{self, BatchError, BatchOptions, FileReport, Found, Observer};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::exit;

/// Runs the batch, prints its summary (table or JSON lines) and picks the exit code.
pub fn run(
    inputs: &[PathBuf],
    output: &Path,
    opts: &BatchOptions,
    json: bool,
    quiet: bool,
) -> Result<i32> {
    let mut progress = Progress::new(quiet);
    let summary = match batch::quantize_all(inputs, output, opts, &mut progress) {
        Ok(s) => s,
        Err(e) => {
            progress.bar.finish_and_clear();
            eprintln!("tflq: error: {e}");
            return Ok(match e {
                BatchError::CreateOutput { .. } => exit::FAILED,
                _ => exit::USAGE,
            });
        }
    };
    progress.bar.finish_and_clear();
    for p in &summary.problems {
        let what = if p.is_error() { "error" } else { "warning" };
        eprintln!("tflq: {what}: {p}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        summary.write_json_lines(&mut out)?;
    } else if !quiet {
        write!(out, "{summary}")?;
    }
    out.flush()?;
    if summary.interrupted {
        let t = &summary.totals;
        eprintln!(
            "tflq: interrupted: {} done, {} stopped while being written, {} not started; no partial output is left",
            crate::text::count(summary.files.len() - t.interrupted, "file", "files"),
            t.interrupted,
            t.not_started
        );
        return Ok(exit::INTERRUPTED);
    }
    if summary.totals.errors > 0 {
        eprintln!(
            "tflq: {} of {} failed or could not be read; the others were processed",
            summary.totals.errors,
            crate::text::count(summary.totals.models, "model", "models")
        );
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}

/// The progress bar on stderr (drawn only on a terminal), and messages as files finish.
struct Progress {
    bar: ProgressBar,
    files: usize,
    done: usize,
    current: Vec<PathBuf>,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        let style = ProgressStyle::with_template(
            "{prefix:>11} [{bar:25}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress {
            bar,
            files: 0,
            done: 0,
            current: Vec::new(),
        }
    }

    fn redraw(&self) {
        self.bar
            .set_prefix(format!("{}/{} files", self.done, self.files));
        let names: Vec<_> = self
            .current
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        self.bar.set_message(names.join(", "));
    }
}

impl Observer for Progress {
    fn planned(&mut self, files: usize, bytes: u64) {
        self.files = files;
        self.bar.set_length(bytes);
        self.bar.enable_steady_tick(Duration::from_millis(200));
        self.redraw();
    }

    fn started(&mut self, found: &Found) {
        self.current.push(found.relative.clone());
        self.redraw();
    }

    fn finished(&mut self, found: &Found, report: &FileReport) {
        self.current.retain(|p| p != &found.relative);
        self.done += 1;
        self.bar.inc(found.bytes);
        self.redraw();
        // Errors as they happen (they are in the summary too), for long runs and CI logs.
        self.bar.suspend(|| {
            if let Some(e) = report.error.as_ref().filter(|_| report.is_error()) {
                eprintln!("tflq: error: {}: {e}", found.path.display());
            }
            for w in &report.warnings {
                eprintln!("tflq: warning: {}: {w}", found.path.display());
            }
        });
    }
}
