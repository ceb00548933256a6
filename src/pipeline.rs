//! From path to path: one model file in, its quantized model or its report out.
//!
//! Every path here opens its inputs through [`ModelFile`]: read or mapped once
//! ([`crate::io::map_input`]), parsed with the path in any error, and checked for a change
//! (size, modification time) before anything made from it is committed, so a file another
//! process writes while it is being read gives an error, never a result made from a mixture.
//! `quantize_file` checks before the output gets its name; the readers (`report_file`,
//! `against_files`, [`read_model`]) check after their work, before returning it.

use std::path::Path;
use std::time::Instant;

use crate::cancel::Cancel;
use crate::error::{Error, ModelError, Result};
use crate::io::{Durability, Mapped, Unnamed, map_input, same_file, write_unnamed};
use crate::model::Model;
use crate::plan::Options;
use crate::report::{Report, ReportOptions, against, report};
use crate::summary::Summary;

/// Options of [`quantize_file`].
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// What to quantize.
    pub quant: Options,
    /// Allow the output path to be the input path.
    pub in_place: bool,
    /// Stops the write in progress (no partial output is left) and, in a batch, the files
    /// not yet started.
    pub cancel: Cancel,
    /// Whether each output is on disk before it gets its name (the default) or named as
    /// soon as it is complete, without waiting for the disk.
    pub durability: Durability,
}

/// A model file opened for reading: its bytes, and the check that it did not change since.
pub struct ModelFile {
    data: Mapped,
    path: std::path::PathBuf,
}

impl ModelFile {
    /// Reads or maps the file at `path` (regular files only).
    pub fn open(path: &Path) -> Result<ModelFile> {
        Ok(ModelFile {
            data: map_input(path)?,
            path: path.to_owned(),
        })
    }

    /// The file's bytes, as they were when opened.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Parses the model; an error names the file.
    pub fn parse(&self) -> Result<Model<'_>> {
        Model::parse(&self.data).map_err(|e: ModelError| Error::model(&self.path, e))
    }

    /// Fails if the file changed since it was opened: call it before committing anything
    /// made from [`ModelFile::bytes`].
    pub fn check_unchanged(&self) -> Result<()> {
        self.data.check_unchanged()
    }

    /// Gives the file's memory back ([`Mapped::release`]).
    pub fn release(self) {
        self.data.release();
    }
}

/// Quantizes the model at `input` into `output`.
///
/// The output appears complete or not at all; the input is never modified. An output that
/// names the input (also through a link) is refused unless `opts.in_place`.
pub fn quantize_file(input: &Path, output: &Path, opts: &FileOptions) -> Result<Summary> {
    let start = Instant::now();
    let (mut summary, written) = quantize_unnamed(input, output, opts)?;
    written.commit()?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// [`quantize_file`] but for the output's commit, which is the caller's (a batch commits
/// several at once, [`crate::io::commit_all`]). The summary's time is left unmeasured (0):
/// the caller times what it counts.
pub(crate) fn quantize_unnamed(
    input: &Path,
    output: &Path,
    opts: &FileOptions,
) -> Result<(Summary, Unnamed)> {
    let data = ModelFile::open(input)?;
    if same_file(input, output) && !opts.in_place {
        return Err(Error::SameFile {
            path: output.to_owned(),
        });
    }
    let permissions = std::fs::metadata(input).ok().map(|m| m.permissions());
    let (summary, written) =
        write_unnamed(output, permissions, &opts.cancel, opts.durability, |w| {
            let summary =
                crate::quantize_to(data.bytes(), &opts.quant, w).map_err(|e| match e {
                    Error::Invalid(source) => Error::model(input, source),
                    Error::Write(source) => Error::io(output, "write", source),
                    other => other,
                })?;
            // Before the output gets its name: not from an input that changed meanwhile.
            data.check_unchanged()?;
            // The input is no longer needed: its map goes while the output is made durable.
            rayon::spawn(move || data.release());
            Ok(summary)
        })?;
    Ok((summary, written))
}

/// What quantizing the model at `path` with `opts` would do, without writing anything: the
/// number of tensors that would be quantized (0: the output would be the input unchanged).
/// Fails as [`quantize_file`] would on a model that cannot be read.
pub fn plan_file(path: &Path, opts: &Options) -> Result<usize> {
    read_model(path, |model| {
        let plan = crate::plan::plan(model, opts);
        if !plan.conflicts().is_empty() {
            return Err(Error::Plan {
                conflicts: plan.conflicts().to_vec(),
            });
        }
        Ok(plan.jobs().iter().map(|j| j.users.len()).sum())
    })?
}

/// Parses the model at `path` and gives it to `f` (for commands that only read); fails if
/// the file changed while `f` read it.
pub fn read_model<T>(path: &Path, f: impl FnOnce(&Model<'_>) -> T) -> Result<T> {
    let file = ModelFile::open(path)?;
    let value = f(&file.parse()?);
    file.check_unchanged()?;
    Ok(value)
}

/// [`read_model`] of two files: both opened, then both parsed, then `f`, then both checked.
fn read_models<T>(a: &Path, b: &Path, f: impl FnOnce(&Model<'_>, &Model<'_>) -> T) -> Result<T> {
    let (fa, fb) = (ModelFile::open(a)?, ModelFile::open(b)?);
    let (ma, mb) = (fa.parse()?, fb.parse()?);
    let value = f(&ma, &mb);
    fa.check_unchanged()?;
    fb.check_unchanged()?;
    Ok(value)
}

/// [`report()`] of the model at `path`.
pub fn report_file(path: &Path, opts: &ReportOptions) -> Result<Report> {
    let mut r = read_model(path, |model| report(model, opts))?;
    if !r.plan_conflicts.is_empty() {
        return Err(Error::Plan {
            conflicts: r.plan_conflicts,
        });
    }
    r.model = Some(path.display().to_string());
    Ok(r)
}

/// [`against()`] of the quantized model at `quantized` and its float original at `float`.
pub fn against_files(float: &Path, quantized: &Path, opts: &ReportOptions) -> Result<Report> {
    let mut r = read_models(float, quantized, |f, q| against(f, q, opts))?;
    r.model = Some(float.display().to_string());
    r.against = Some(quantized.display().to_string());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn copy_fixture(dir: &Path, name: &str) -> std::path::PathBuf {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap();
        to
    }

    /// Appends to `path`, as another process writing the file while it is read would.
    fn grow(path: &Path) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"more").unwrap();
    }

    fn is_changed(e: &Error, path: &Path, before: u64) -> bool {
        matches!(e, Error::Changed { path: p, before: b, after } if p == path && *b == before && *after == before + 4)
    }

    #[test]
    fn a_report_of_a_file_changed_while_it_was_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = copy_fixture(dir.path(), "mlp.tflite");
        let len = std::fs::metadata(&path).unwrap().len();
        let opts = ReportOptions::default();
        // Unchanged: the same report as from the bytes.
        let r = read_model(&path, |m| report(m, &opts)).unwrap();
        assert!(!r.tensors.is_empty());
        // The file grows between open and the end of the work: refused.
        let e = read_model(&path, |m| {
            grow(&path);
            report(m, &opts)
        })
        .unwrap_err();
        assert!(is_changed(&e, &path, len), "{e}");
        assert!(
            e.to_string().contains("changed while it was being read"),
            "{e}"
        );
    }

    #[test]
    fn an_against_report_is_refused_when_either_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let float = copy_fixture(dir.path(), "mlp.tflite");
        let quantized = dir.path().join("mlp.int8.tflite");
        quantize_file(&float, &quantized, &FileOptions::default()).unwrap();
        let opts = ReportOptions::default();
        let r = against_files(&float, &quantized, &opts).unwrap();
        assert!(!r.tensors.is_empty());
        for changed in [&float, &quantized] {
            let before = std::fs::metadata(changed).unwrap().len();
            let e = read_models(&float, &quantized, |f, q| {
                grow(changed);
                against(f, q, &opts)
            })
            .unwrap_err();
            assert!(is_changed(&e, changed, before), "{e}");
        }
    }

    #[test]
    fn a_cancelled_quantize_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = copy_fixture(dir.path(), "mlp.tflite");
        let output = dir.path().join("out.tflite");
        let opts = FileOptions::default();
        opts.cancel.cancel();
        let e = quantize_file(&input, &output, &opts).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert!(!output.exists());
    }
}
