//! The `tflq` command: parse the arguments, run, report errors, map them to exit codes.

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
