//! The command line (feature `cli`): clap definitions and the subcommands, over the library.
//!
//! [`main_with_args`] is the whole `tflq` command: the binary calls it with its arguments,
//! and a host that embeds the command (a Python package) calls it with its own.

mod batch;
mod inspect;
mod options;
mod quantize;
mod report;

use std::ffi::OsString;
use std::sync::{Mutex, Once};

use clap::{Parser, Subcommand};

use crate::Cancel;

/// Exit codes, documented in `--help`.
pub mod exit {
    /// Success (also: nothing to quantize).
    pub const OK: i32 = 0;
    /// A model or file could not be processed (the message says which and why).
    pub const FAILED: i32 = 1;
    /// The command line is wrong.
    pub const USAGE: i32 = 2;
    /// Interrupted (Ctrl-C); no partial output was left behind.
    pub const INTERRUPTED: i32 = 130;
    /// A quality gate (e.g. `--fail-below-sqnr`, `inspect --target micro`) was not met; the
    /// report was still printed.
    pub const GATE: i32 = 3;
    /// A quality gate was asked for but a model had no tensor to measure it on (nothing of
    /// `--against` matched, or nothing would be quantized); the report was still printed.
    pub const GATE_UNMEASURED: i32 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0    success (including a model with nothing to quantize)
  1    a model or file could not be processed; the message names it and says why
       (in a batch: some failed, every other one was processed)
  2    invalid command line; also an output that is its input, a file or a folder
       (also through a link), without --in-place
  3    a quality gate was not met: --fail-below-sqnr, or `inspect --target micro`
       found what TensorFlow Lite Micro would refuse or compute wrongly
  4    a quality gate was asked for, but a model had no measured tensor to apply it to
  130  interrupted: no file is started after Ctrl-C, none is left partial";

/// Quantize the float32 weights of TensorFlow Lite models to int8.
#[derive(Debug, Parser)]
#[command(name = "tflq", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(after_help = EXIT_CODES)]
    Quantize(quantize::Args),
    #[command(after_help = EXIT_CODES)]
    Inspect(inspect::Args),
    #[command(after_help = EXIT_CODES)]
    Report(report::Args),
}

/// The token of the command running now, which Ctrl-C cancels.
static RUNNING: Mutex<Option<Cancel>> = Mutex::new(None);

/// Installs the Ctrl-C (and SIGTERM) handler once per process: it cancels the token of the
/// command running at the time.
fn on_interrupt(cancel: &Cancel) {
    static HANDLER: Once = Once::new();
    if let Ok(mut running) = RUNNING.lock() {
        *running = Some(cancel.clone());
    }
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if let Ok(running) = RUNNING.lock() {
                if let Some(c) = running.as_ref() {
                    c.cancel();
                }
            }
        });
    });
}

/// Runs the command line `args` (the first is the program name, as in `std::env::args_os`)
/// and returns the process exit code; messages go to standard output and error.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    // Ctrl-C: stop writing at the next block, remove temporary files, exit 130.
    let cancel = Cancel::new();
    on_interrupt(&cancel);
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args, &cancel),
        Command::Inspect(args) => inspect::run(args),
        Command::Report(args) => report::run(args, &cancel),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err, &cancel),
    }
}

/// Prints an error with its chain of causes and picks the exit code.
fn report(err: &anyhow::Error, cancel: &Cancel) -> i32 {
    if cancel.is_cancelled() {
        eprintln!("tflq: interrupted; no output was written");
        return exit::INTERRUPTED;
    }
    if err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return exit::OK;
    }
    eprintln!("tflq: error: {err}");
    // The library's messages already end with their cause; print only causes not yet said.
    let mut said = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        said = text;
    }
    exit::FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_runs_in_process_and_returns_its_exit_code() {
        assert_eq!(main_with_args(["tflq", "--version"]), exit::OK);
        assert_eq!(main_with_args(["tflq", "no-such-command"]), exit::USAGE);
        let dir = tempfile::tempdir().unwrap();
        let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.tflite");
        let output = dir.path().join("mlp.int8.tflite");
        // Called twice in one process (as a Python host would): each call gets its own token.
        for _ in 0..2 {
            let args = [
                OsString::from("tflq"),
                "quantize".into(),
                input.clone().into(),
                "-o".into(),
                output.clone().into(),
                "--quiet".into(),
            ];
            assert_eq!(main_with_args(args), exit::OK);
            let want = crate::quantize(&std::fs::read(&input).unwrap(), &crate::Options::default())
                .unwrap()
                .bytes;
            assert_eq!(std::fs::read(&output).unwrap(), want);
        }
        let missing = dir.path().join("missing.tflite");
        let args = [OsString::from("tflq"), "inspect".into(), missing.into()];
        assert_eq!(main_with_args(args), exit::FAILED);
    }
}
