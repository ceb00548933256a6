//! Command-line interface: clap definitions and the subcommands, over the library.

mod batch;
mod inspect;
mod options;
mod quantize;
mod report;

use clap::{Parser, Subcommand};

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
    /// A quality gate (e.g. `--fail-below-sqnr`) was not met; the report was still printed.
    pub const GATE: i32 = 3;
}

const EXIT_CODES: &str = "\
Exit codes:
  0    success (including a model with nothing to quantize)
  1    a model or file could not be processed; the message names it and says why
       (in a batch: some failed, every other one was processed)
  2    invalid command line (also: an output folder that is the input folder)
  3    a quality gate (--fail-below-sqnr) was not met
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
    Inspect(inspect::Args),
    Report(report::Args),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
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
    let _ = ctrlc::set_handler(tflq::files::request_stop);
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Report(args) => report::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints an error with its chain of causes and picks the exit code.
fn report(err: &anyhow::Error) -> i32 {
    if tflq::files::stop_requested() {
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
