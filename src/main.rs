//! The `tflq` command: everything is in [`tflq::cli`]; this only passes the arguments and
//! exits with the code it returns.

fn main() {
    std::process::exit(tflq::cli::main_with_args(std::env::args_os()));
}
