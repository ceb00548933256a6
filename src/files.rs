//! From path to path: map the input, write the output atomically, refuse to clobber.
//!
//! The output is written to a temporary file in the target folder and renamed over the
//! target only once complete, so a failure (bad model, full disk, interruption) leaves no
//! partial file and never touches an existing output. The input is only ever read.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{Error, ModelError, Result};
use crate::plan::Options;
use crate::summary::Summary;

/// Options of [`quantize_file`].
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// What to quantize.
    pub quant: Options,
    /// Allow the output path to be the input path.
    pub in_place: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every write in progress to stop at its next block; their temporary files are removed
/// and they fail with an I/O error saying "interrupted". Safe to call from a signal handler
/// thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether [`request_stop`] was called.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A writer that fails once a stop is requested.
///
/// The error's kind is `Other`, not `Interrupted`: `write_all`, `BufWriter` and `io::copy`
/// retry `Interrupted` writes forever, so that kind would turn a stop into a busy loop.
struct Stoppable<W>(W);

impl<W: Write> Write for Stoppable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if stop_requested() {
            return Err(std::io::Error::other("interrupted"));
        }
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A read-only view of an input file: memory-mapped, or empty.
pub struct Mapped {
    map: Option<memmap2::Mmap>,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Opens and maps `path` for reading. Folders and other non-files are refused.
pub fn map_input(path: &Path) -> Result<Mapped> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    if meta.len() == 0 {
        return Ok(Mapped { map: None });
    }
    // SAFETY: the map is read-only and we never hand out a mutable view. The one remaining
    // risk is outside our control: if another process truncates the file while it is mapped,
    // reading the lost pages raises SIGBUS and ends the process (the input itself is not
    // harmed, and the output, still a temporary file, is never renamed into place).
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
    Ok(Mapped { map: Some(map) })
}

/// Whether `a` and `b` name the same file (following symlinks; `b` may not exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Writes a file atomically: `write` fills a temporary file beside `path`, which is renamed
/// to `path` only if `write` succeeds. The new file gets `mode`'s permission bits.
pub fn write_atomic<T>(
    path: &Path,
    permissions: Option<std::fs::Permissions>,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if path.is_dir() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".tflq-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(path, "create the output in its folder", e))?;
    let value = write(&mut Stoppable(tmp.as_file_mut()))?;
    if let Some(p) = permissions {
        tmp.as_file()
            .set_permissions(p)
            .map_err(|e| Error::io(path, "set permissions of", e))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::io(path, "move the output into place", e.error))?;
    Ok(value)
}

/// Quantizes the model at `input` into `output`.
///
/// The output appears complete or not at all; the input is never modified. An output that
/// names the input (also through a link) is refused unless `opts.in_place`.
pub fn quantize_file(input: &Path, output: &Path, opts: &FileOptions) -> Result<Summary> {
    let start = Instant::now();
    let data = map_input(input)?;
    if same_file(input, output) && !opts.in_place {
        return Err(Error::SameFile {
            path: output.to_owned(),
        });
    }
    let permissions = std::fs::metadata(input).ok().map(|m| m.permissions());
    let mut summary = write_atomic(output, permissions, |w| {
        crate::quantize_to(&data, &opts.quant, w).map_err(|e| match e {
            Error::Invalid(source) => Error::model(input, source),
            Error::Write(source) => Error::io(output, "write", source),
            other => other,
        })
    })?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Parses the model at `path` (for commands that only read).
pub fn with_model<T>(path: &Path, f: impl FnOnce(&crate::Model<'_>) -> T) -> Result<T> {
    let data = map_input(path)?;
    let model = crate::Model::parse(&data).map_err(|e: ModelError| Error::model(path, e))?;
    Ok(f(&model))
}
