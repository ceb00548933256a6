//! SHIM: the `tflq` command line, run inside the Python module.
//!
//! Until the library exports `tflq::cli::main_with_args(args) -> i32` (behind its `cli`
//! feature), this compiles the binary's own subcommand files (`src/cli/*.rs`, unchanged) into
//! this crate and repeats the small top level of `src/cli/mod.rs` with arguments passed in
//! instead of read from the process. When that entry point lands: delete this file, the
//! `mod cli_shim` line in lib.rs and the command line's dependencies in Cargo.toml, depend on
//! `tflq` with `features = ["cli"]`, and call `tflq::cli::main_with_args(argv)` in `run_cli`.

#[path = "../../src/cli/batch.rs"]
mod batch;
#[path = "../../src/cli/inspect.rs"]
mod inspect;
#[path = "../../src/cli/options.rs"]
mod options;
#[path = "../../src/cli/quantize.rs"]
mod quantize;
#[path = "../../src/cli/report.rs"]
mod report;

use clap::{Parser, Subcommand};

/// Exit codes (as in `src/cli/mod.rs`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const INTERRUPTED: i32 = 130;
    pub const GATE: i32 = 3;
}

const EXIT_CODES: &str = "\
Exit codes:
  0    success (including a model with nothing to quantize)
  1    a model or file could not be processed; the message names it and says why
       (in a batch: some failed, every other one was processed)
  2    invalid command line (also: an output folder that is the input folder)
  3    a quality gate (--fail-below-sqnr, validate --min-sqnr) was not met
  130  interrupted: no file is started after Ctrl-C, none is left partial";

/// Quantize the float32 weights of TensorFlow Lite models to int8.
///
/// The Python package adds `tflq validate ORIGINAL QUANTIZED` (run both models in LiteRT and
/// compare their outputs) and `tflq report --format model-explorer`.
#[derive(Debug, Parser)]
#[command(name = "tflq", version, about, long_about, after_help = EXIT_CODES)]
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

/// Runs the command line on `args` (the first is the program name) and returns the exit code.
pub fn main_with_args(args: Vec<String>) -> i32 {
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
    let _ = ctrlc::set_handler(tflq::files::request_stop);
    let result = match cli.command {
        Command::Quantize(args) => quantize::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Report(args) => report::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => print_error(&err),
    }
}

fn print_error(err: &anyhow::Error) -> i32 {
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
