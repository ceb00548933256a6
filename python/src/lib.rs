//! `tflq._tflq`: the native part of the Python package `tflq`.
//!
//! Thin: Python values in, the library called through `api.rs` without the GIL on a worker
//! thread, JSON text or bytes out, library errors turned into the exceptions of
//! `tflq._errors`. The pure-Python package (`python/tflq/`) gives the public API its shape.
//!
//! Ctrl-C: the calling thread waits for the worker in short slices with the GIL released and
//! runs Python's signal handlers in between (`check_signals`); when one raises (SIGINT:
//! `KeyboardInterrupt`), the work is cancelled, its temporary output removed, and the
//! exception propagates once the worker has stopped.

mod api;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use api::{Failure, QuantArgs};

/// Raises the `tflq._errors` exception that `failure` calls for.
fn raise(py: Python<'_>, failure: Failure) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let errors = py.import("tflq._errors")?;
        let value = match failure {
            Failure::Model(msg) => errors.getattr("ModelError")?.call1((msg,))?,
            Failure::Usage(msg) => errors.getattr("OptionError")?.call1((msg,))?,
            Failure::Batch(msg) => errors.getattr("BatchError")?.call1((msg,))?,
            Failure::Io {
                message,
                path,
                kind,
                errno,
            } => errors
                .getattr("_os_error")?
                .call1((kind, errno, message, path))?,
        };
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

fn quant_args(d: &Bound<'_, PyDict>) -> PyResult<QuantArgs> {
    fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
        match d.get_item(key)? {
            Some(v) => v.extract().map_err(Into::into),
            None => Err(PyRuntimeError::new_err(format!("option {key} missing"))),
        }
    }
    Ok(QuantArgs {
        min_elements: get(d, "min_elements")?,
        mode: get(d, "mode")?,
        granularity: get(d, "granularity")?,
        symmetric: get(d, "symmetric")?,
        weight_type: get(d, "weight_type")?,
        include_ops: get(d, "include_ops")?,
        exclude_ops: get(d, "exclude_ops")?,
        exclude_tensors: get(d, "exclude_tensors")?,
        quantize_biases: get(d, "quantize_biases")?,
        range: get(d, "range")?,
        equalize: get(d, "equalize")?,
        block_size: get(d, "block_size")?,
        target: get(d, "target")?,
        layout: get(d, "layout")?,
        plan: get(d, "plan")?,
    })
}

enum Msg<T> {
    Progress(api::Progress),
    Done(T),
}

/// Runs `work` on a worker thread without the GIL, calling `progress` on this thread for
/// each event it sends, and cancels it when a Python signal handler (Ctrl-C) raises.
fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce(&tflq::Cancel, &dyn Fn(api::Progress)) -> T + Send,
    mut progress: impl FnMut(api::Progress) -> PyResult<()>,
) -> PyResult<T> {
    let stop = tflq::Cancel::new();
    let (tx, rx) = mpsc::channel::<Msg<T>>();
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || {
            let events = tx.clone();
            let send = move |p| {
                let _ = events.send(Msg::Progress(p));
            };
            let result = work(stop, &send);
            let _ = tx.send(Msg::Done(result));
        });
        let mut rx = rx;
        loop {
            let (msg, back) = py.detach(move || {
                let msg = rx.recv_timeout(Duration::from_millis(50));
                (msg, rx)
            });
            rx = back;
            let failed = match msg {
                Ok(Msg::Done(result)) => return Ok(result),
                Ok(Msg::Progress(p)) => progress(p).err(),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err("tflq: the worker thread failed"));
                }
            };
            if let Some(err) = failed.or_else(|| py.check_signals().err()) {
                stop.cancel();
                // Wait for the worker to remove its temporary output and return.
                py.detach(move || rx.iter().all(|m| !matches!(m, Msg::Done(_))));
                return Err(err);
            }
        }
    })
}

/// Quantizes the model at `input` into `output`; returns the summary as JSON text.
#[pyfunction]
fn quantize_file(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    options: &Bound<'_, PyDict>,
    in_place: bool,
    fsync: bool,
) -> PyResult<String> {
    let quant = quant_args(options)?;
    interruptible(
        py,
        |stop, _| api::quantize_file(&input, &output, &quant, in_place, fsync, stop),
        |_| Ok(()),
    )?
    .map_err(|f| raise(py, f))
}

/// Quantizes a model held in `data`; returns the new model and the summary as JSON text.
#[pyfunction]
fn quantize_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    options: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    let quant = quant_args(options)?;
    let input = data.as_bytes();
    let (bytes, summary) = interruptible(
        py,
        |stop, _| api::quantize_bytes(input, &quant, stop),
        |_| Ok(()),
    )?
    .map_err(|f| raise(py, f))?;
    Ok((PyBytes::new(py, &bytes), summary))
}

/// Quantizes every model under `inputs` into `output`; returns the JSON lines of the batch.
/// `progress(done, total, path, status, error, warnings)` is called as each file finishes.
#[pyfunction]
#[pyo3(signature = (inputs, output, options, jobs, in_place, fsync, skip_existing, dry_run, copy_others, shard, progress))]
#[allow(clippy::too_many_arguments)]
fn quantize_dir(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    output: PathBuf,
    options: &Bound<'_, PyDict>,
    jobs: usize,
    in_place: bool,
    fsync: bool,
    skip_existing: bool,
    dry_run: bool,
    copy_others: bool,
    shard: Option<String>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let quant = quant_args(options)?;
    let batch = api::BatchArgs {
        jobs,
        in_place,
        fsync,
        skip_existing,
        dry_run,
        copy_others,
        shard,
    };
    interruptible(
        py,
        |stop, send| api::quantize_dir(&inputs, &output, &quant, &batch, send, stop),
        |p| match &progress {
            Some(f) => f
                .call1((p.done, p.total, p.path, p.status, p.error, p.warnings))
                .map(drop),
            None => Ok(()),
        },
    )?
    .map_err(|f| raise(py, f))
}

/// A measured report, to be written in any of the library's formats.
#[pyclass(frozen, module = "tflq._tflq", name = "NativeReport")]
struct NativeReport(api::Report);

#[pymethods]
impl NativeReport {
    /// The report as the `--format json` document.
    fn json(&self) -> String {
        self.0.json()
    }

    /// The report in `format` (table, json, csv, markdown, html).
    fn render(&self, py: Python<'_>, format: &str, width: usize, plots: usize) -> PyResult<String> {
        self.0
            .render(format, width, plots)
            .map_err(|f| raise(py, f))
    }
}

/// Measures what quantizing costs each weight tensor of `model` (or, with `against`, what
/// the quantized model `against` costs).
#[pyfunction]
#[pyo3(signature = (model, against, options, histograms))]
fn report(
    py: Python<'_>,
    model: PathBuf,
    against: Option<PathBuf>,
    options: &Bound<'_, PyDict>,
    histograms: bool,
) -> PyResult<NativeReport> {
    let quant = quant_args(options)?;
    let r = interruptible(
        py,
        |_, _| api::report(&model, against.as_deref(), &quant, histograms),
        |_| Ok(()),
    )?
    .map_err(|f| raise(py, f))?;
    Ok(NativeReport(r))
}

/// What the model at `model` holds, as the `inspect --json` text.
#[pyfunction]
fn inspect(py: Python<'_>, model: PathBuf) -> PyResult<String> {
    interruptible(py, |_, _| api::inspect(&model), |_| Ok(()))?.map_err(|f| raise(py, f))
}

/// Runs the `tflq` command line on `argv` (program name first); returns the exit code.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(move || tflq::cli::main_with_args(argv))
}

#[pymodule]
fn _tflq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_file, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_dir, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_class::<NativeReport>()?;
    m.add("__version__", api::VERSION)?;
    Ok(())
}
