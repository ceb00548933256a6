//! Plain file I/O: read or map an input, write an output atomically, tell files apart.
//!
//! Nothing here knows models, summaries or quantization: bytes in, bytes out.
//!
//! **Input.** Only regular files are opened (a folder, FIFO, socket or device is refused
//! before any open, so nothing blocks or reads forever). Files up to [`READ_LIMIT`] (1 MiB)
//! are read into memory; larger ones are memory-mapped, since reading them into fresh memory
//! costs several times what mapping does. A mapped file that another process truncates
//! raises SIGBUS on the next read of a lost page, which ends the process: nothing in safe
//! code can turn that into an error. Reading tiny files removes that window where it costs
//! nothing; for the others the size is checked right after mapping, and size and
//! modification time are checked again before the output is committed, so a file changed
//! while it was read is refused instead of giving an output made from a mixture. See
//! `docs/robustness.md`.
//!
//! **Output.** The output is written to an unnamed temporary file in the target folder
//! (`O_TMPFILE`, which the kernel removes if the process dies at any point) and linked and
//! renamed over the target only once complete and synced, so a failure (bad model, full
//! disk, interruption, a kill) leaves no partial file and never touches an existing output.
//! [`write_unnamed`] stops short of that commit, for callers that commit several outputs at
//! once ([`commit_all`]: one journal commit of the file system for all of them).
//! Where `O_TMPFILE` is unsupported a named temporary file is used, removed on failure. An
//! output that is a symbolic link is written through to its target; one that is a device or
//! FIFO (`/dev/null`, `/dev/full`, a pipe) is written directly, since it cannot be replaced.
//! The input is only ever read.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::cancel::Cancel;
use crate::error::{Error, Result};

/// A writer that fails once its token is cancelled.
///
/// The error's kind is `Other`, not `Interrupted`: `write_all`, `BufWriter` and `io::copy`
/// retry `Interrupted` writes forever, so that kind would turn a stop into a busy loop.
pub struct Stoppable<'a, W>(pub W, pub &'a Cancel);

impl<W: Write> Write for Stoppable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1.is_cancelled() {
            return Err(std::io::Error::other("interrupted"));
        }
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A file being written that asks the kernel to start writing each few MiB to disk as soon
/// as they are written (Linux `sync_file_range`, which only starts the writeback and does not
/// wait), so that the `fsync` before the rename has only the last of it left to wait for: it
/// took 89 ms after a 256 MiB output otherwise. Elsewhere it writes only.
struct Writeback<'a> {
    file: &'a mut File,
    /// Bytes written, and the end of what was last handed to the kernel.
    written: u64,
    started: u64,
    /// Whether to hand anything to the kernel ([`Durability::Synced`]).
    early: bool,
}

impl<'a> Writeback<'a> {
    fn new(file: &'a mut File, durability: Durability) -> Writeback<'a> {
        Writeback {
            file,
            written: 0,
            started: 0,
            early: durability == Durability::Synced,
        }
    }
}

/// Bytes written between two requests: large enough that the requests cost nothing, small
/// enough that the disk starts early.
const WRITEBACK_STEP: u64 = 2 << 20;

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.early && self.written - self.started >= WRITEBACK_STEP {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let range = (self.started as i64, (self.written - self.started) as i64);
                sync_range(self.file.as_raw_fd(), range, libc::SYNC_FILE_RANGE_WRITE);
            }
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `sync_file_range` of `(offset, length)` of the file `fd` (length 0: to its end).
#[cfg(target_os = "linux")]
fn sync_range(fd: std::os::fd::RawFd, (from, len): (i64, i64), flags: libc::c_uint) {
    // SAFETY: a plain system call on a file descriptor its caller keeps open; it reads no
    // memory of ours. Its result is a hint's: a failure changes nothing, and the fsync that
    // follows reports any error of the writeback.
    #[allow(unsafe_code)]
    unsafe {
        libc::sync_file_range(fd, from, len, flags)
    };
}

/// Inputs up to this size are read into memory instead of mapped, which leaves no SIGBUS
/// window if another process truncates the file. Larger ones are mapped: reading them costs
/// a fault of a fresh anonymous page per 4 KiB, far more than mapping the page cache (a
/// 180 MiB model: 0.18 s of system time read, 0.03 s mapped; `docs/bench.md`).
pub const READ_LIMIT: u64 = 1 << 20;

/// The bytes of an input file (read, or memory-mapped), with what is needed to tell whether
/// the file changed since.
pub struct Mapped {
    data: Data,
    file: File,
    path: PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

enum Data {
    Read(Vec<u8>),
    Map(memmap2::Mmap),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.data {
            Data::Read(v) => v,
            Data::Map(m) => m,
        }
    }
}

impl Mapped {
    /// Gives the memory back: a map's page tables are dropped in parts, on the pool.
    ///
    /// Unmapping costs the kernel a step per 4 KiB page: 3 ms for 48 MiB, 11 ms for 180 MiB,
    /// on one core at exit if nothing else is done. `MADV_DONTNEED` of disjoint parts may
    /// run at once (it takes the map's lock shared; on the project's VM two cores took about
    /// as long as one, the page cache's accounting being shared), and it leaves the final
    /// unmap nothing to do. Called in the background while the output is made durable (see
    /// `quantize_file`), it overlaps the `fsync`. The pages stay in the page cache; only
    /// this process's view of them goes.
    pub fn release(self) {
        use rayon::prelude::*;
        let Data::Map(map) = &self.data else {
            return;
        };
        let page = 4096;
        let part = map
            .len()
            .div_ceil(rayon::current_num_threads())
            .div_ceil(page)
            * page;
        if part == 0 {
            return;
        }
        (0..map.len()).into_par_iter().step_by(part).for_each(|at| {
            let len = part.min(map.len() - at);
            // SAFETY: DONTNEED on a shared, read-only file map only drops its page table
            // entries: a later read would fault the same file pages back in. Nothing reads
            // the map any more (`self` is consumed), and an error just leaves the work to
            // the unmap below.
            #[allow(unsafe_code)]
            let _ =
                unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) };
        });
    }

    /// Fails if the file's size or modification time changed since it was opened: another
    /// process wrote to it while it was being read, so what was read may be a mixture.
    pub fn check_unchanged(&self) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "check", e))?;
        if now.len() != self.len || now.modified().ok() != self.modified {
            return Err(Error::Changed {
                path: self.path.clone(),
                before: self.len,
                after: now.len(),
            });
        }
        Ok(())
    }
}

/// Opens `path` for reading, refusing anything but a regular file, and reads or maps it.
pub fn map_input(path: &Path) -> Result<Mapped> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    // Non-blocking, so that a FIFO put in the file's place after the check above cannot
    // hang the open; regular files ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let len = meta.len();
    let changed = |after: u64| Error::Changed {
        path: path.to_owned(),
        before: len,
        after,
    };
    let data = if len <= READ_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        // One byte more than expected, to notice a file that grows while it is read.
        (&file)
            .take(len + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, "read", e))?;
        if buf.len() as u64 != len {
            return Err(changed(buf.len() as u64));
        }
        Data::Read(buf)
    } else {
        // SAFETY: the map is read-only and we never hand out a mutable view. The one risk
        // left is outside our control: if another process truncates the file while it is
        // mapped, reading a lost page raises SIGBUS and ends the process. The input itself
        // is not harmed, and the output, still an unnamed temporary file, vanishes with the
        // process. Files up to READ_LIMIT are read instead, which has no such window.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))?;
        if map.len() as u64 != len {
            return Err(changed(map.len() as u64));
        }
        Data::Map(map)
    };
    Ok(Mapped {
        data,
        file,
        path: path.to_owned(),
        len,
        modified: meta.modified().ok(),
    })
}

/// Whether `a` and `b` name the same file (following symlinks; `b` may not exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The file an output path names: a symbolic link is followed to its target (so that the
/// link stays a link), and a dangling one is refused.
fn resolve_output(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)
            .map_err(|e| Error::io(path, "follow the symbolic link of the output", e)),
        _ => Ok(path.to_owned()),
    }
}

/// Writes a file atomically: `write` fills a temporary file beside `path`, which replaces
/// `path` only if `write` succeeds. The new file gets `permissions`. A `path` that exists
/// and is not a regular file or a folder (a device, a FIFO) is written directly. Once
/// `cancel` is cancelled, every write fails ("interrupted") and nothing is left behind.
pub fn write_atomic<T>(
    path: &Path,
    permissions: Option<std::fs::Permissions>,
    cancel: &Cancel,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<T>,
) -> Result<T> {
    let (value, output) = write_unnamed(path, permissions, cancel, Durability::Synced, write)?;
    output.commit()?;
    Ok(value)
}

/// Whether an output reaches the disk before it gets its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to disk (`fsync`) before it is named, so that even a crash of the machine
    /// leaves it complete or absent. The wait is the disk's: 12 MiB took 16-20 ms here.
    #[default]
    Synced,
    /// Named as soon as it is complete, and written to disk whenever the kernel does it, as
    /// `cp` does. A failure or kill of the process still leaves no partial output, but a
    /// crash of the machine or a power loss soon after may leave a named output that is
    /// empty or partial.
    Unsynced,
}

impl Durability {
    /// [`Durability::Synced`] when `fsync` (the default), else [`Durability::Unsynced`]
    /// (`--no-fsync`, Python's `fsync=False`).
    pub fn from_fsync(fsync: bool) -> Durability {
        if fsync {
            Durability::Synced
        } else {
            Durability::Unsynced
        }
    }
}

/// [`write_atomic`] up to the output's commit, which is the caller's: the complete output,
/// not yet durable and without its name. Dropped instead of committed, it vanishes. The
/// commit makes it durable first or not, as `durability` says.
pub fn write_unnamed<T>(
    path: &Path,
    permissions: Option<std::fs::Permissions>,
    cancel: &Cancel,
    durability: Durability,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<T>,
) -> Result<(T, Unnamed)> {
    let target = resolve_output(path)?;
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(Error::NotAFile {
                path: path.to_owned(),
            });
        }
        Ok(m) if !m.is_file() => {
            let value = write_direct(path, &target, cancel, write)?;
            return Ok((value, Unnamed(None)));
        }
        _ => {}
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp =
        Temp::create(&dir).map_err(|e| Error::io(path, "create the output in its folder", e))?;
    let value = write(&mut Stoppable(
        Writeback::new(tmp.file(), durability),
        cancel,
    ))?;
    if let Some(p) = permissions {
        tmp.file()
            .set_permissions(p)
            .map_err(|e| Error::io(path, "set permissions of", e))?;
    }
    let output = Unnamed(Some(Complete {
        tmp,
        dir,
        target,
        path: path.to_owned(),
        durability,
    }));
    Ok((value, output))
}

/// A complete output of [`write_unnamed`], to be made durable and named by
/// [`Unnamed::commit`] or [`commit_all`]; dropped, it vanishes (an output written directly
/// to a device or FIFO has nothing left to do).
pub struct Unnamed(Option<Complete>);

struct Complete {
    tmp: Temp,
    dir: PathBuf,
    target: PathBuf,
    /// The output as the caller named it, for errors.
    path: PathBuf,
    durability: Durability,
}

impl Unnamed {
    /// Makes the output durable, then gives it its name: on disk before it is named, so a
    /// crash cannot leave a named but empty or partial file ([`Durability::Unsynced`]: only
    /// names it).
    pub fn commit(self) -> Result<()> {
        let Some(mut c) = self.0 else {
            return Ok(());
        };
        if c.durability == Durability::Synced {
            c.tmp
                .file()
                .sync_all()
                .map_err(|e| Error::io(&c.path, "write", e))?;
        }
        c.tmp
            .persist(&c.dir, &c.target)
            .map_err(|e| Error::io(&c.path, "move the output into place", e))
    }
}

/// Commits `outputs` together, each as [`Unnamed::commit`] would, at the cost of about one:
/// the data of all of them goes to disk first, then the first `fsync` commits the file
/// system's journal for every one and the others find nothing left to wait for. One
/// `fsync` after another would wait for a journal commit each (100 outputs of 1 MiB here:
/// 0.10-0.22 s one by one, 0.08-0.10 s together). The results are in the order of `outputs`.
pub fn commit_all(mut outputs: Vec<Unnamed>) -> Vec<Result<()>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = [
            libc::SYNC_FILE_RANGE_WRITE,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        ];
        // All writeback started first, then waited for: the disk gets the files at once.
        for flag in flags {
            let outputs = outputs.iter_mut().filter_map(|o| o.0.as_mut());
            for c in outputs.filter(|c| c.durability == Durability::Synced) {
                sync_range(c.tmp.file().as_raw_fd(), (0, 0), flag);
            }
        }
    }
    outputs.into_iter().map(Unnamed::commit).collect()
}

/// Writes to an existing device or FIFO, which cannot be replaced (renaming a file over
/// `/dev/full` would replace the device).
fn write_direct<T>(
    path: &Path,
    target: &Path,
    cancel: &Cancel,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<T>,
) -> Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking open: a FIFO nobody reads fails at once (ENXIO) instead of hanging.
    // Writes are then blocking again, as a reader expects.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(target)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::NXIO.raw_os_error() => {
                Error::io(path, "open the output, a FIFO that nothing reads", e)
            }
            _ => Error::io(path, "open the output", e),
        })?;
    let flags =
        rustix::fs::fcntl_getfl(&file).map_err(|e| Error::io(path, "open the output", e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::io(path, "open the output", e.into()))?;
    let mut out = Stoppable(file, cancel);
    let value = write(&mut out)?;
    out.flush().map_err(|e| Error::io(path, "write", e))?;
    Ok(value)
}

/// A temporary output file: unnamed until it is complete where the system allows.
enum Temp {
    /// `O_TMPFILE`: has no name, so it disappears with the process whatever happens.
    #[cfg(target_os = "linux")]
    Unnamed(File),
    /// A named `.tflq-*.partial` file beside the target, removed when dropped.
    Named(tempfile::NamedTempFile),
}

impl Temp {
    fn create(dir: &Path) -> std::io::Result<Temp> {
        #[allow(unused_mut)]
        let mut unnamed_error = None;
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            match rustix::fs::openat(rustix::fs::CWD, dir, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) if Path::new("/proc/self/fd").is_dir() => {
                    return Ok(Temp::Unnamed(File::from(fd)));
                }
                Ok(_) => {}
                // File systems without O_TMPFILE say so in several ways (EOPNOTSUPP,
                // EISDIR, EINVAL); a named file is tried before giving up.
                Err(e) => unnamed_error = Some(std::io::Error::from(e)),
            }
        }
        tempfile::Builder::new()
            .prefix(".tflq-")
            .suffix(".partial")
            .tempfile_in(dir)
            .map(Temp::Named)
            // Both failed: the first error is the plainer (no temporary name in it).
            .map_err(|e| unnamed_error.unwrap_or(e))
    }

    fn file(&mut self) -> &mut File {
        match self {
            #[cfg(target_os = "linux")]
            Temp::Unnamed(f) => f,
            Temp::Named(t) => t.as_file_mut(),
        }
    }

    /// Gives the complete file the name `target` (replacing what was there).
    fn persist(self, dir: &Path, target: &Path) -> std::io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Temp::Unnamed(mut f) => {
                // Link under a fresh temporary name, then rename over the target: a link
                // cannot replace an existing file.
                use std::os::fd::AsRawFd;
                let from = format!("/proc/self/fd/{}", f.as_raw_fd());
                for attempt in 0..16u32 {
                    let name = dir.join(format!(
                        ".tflq-{}-{}-{attempt}.partial",
                        std::process::id(),
                        fresh()
                    ));
                    match rustix::fs::linkat(
                        rustix::fs::CWD,
                        from.as_str(),
                        rustix::fs::CWD,
                        &name,
                        rustix::fs::AtFlags::SYMLINK_FOLLOW,
                    ) {
                        Ok(()) => {
                            return std::fs::rename(&name, target).inspect_err(|_| {
                                let _ = std::fs::remove_file(&name);
                            });
                        }
                        Err(rustix::io::Errno::EXIST) => continue,
                        Err(_) => break,
                    }
                }
                // Linking failed (no /proc?): copy into a named temporary file instead.
                use std::io::{Seek, SeekFrom};
                let mut named = tempfile::Builder::new()
                    .prefix(".tflq-")
                    .suffix(".partial")
                    .tempfile_in(dir)?;
                f.seek(SeekFrom::Start(0))?;
                std::io::copy(&mut f, named.as_file_mut())?;
                named
                    .as_file()
                    .set_permissions(f.metadata()?.permissions())?;
                named.as_file().sync_all()?;
                named.persist(target).map(|_| ()).map_err(|e| e.error)
            }
            Temp::Named(t) => t.persist(target).map(|_| ()).map_err(|e| e.error),
        }
    }
}

/// A number not returned before by this process.
fn fresh() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Asking for writeback every few MiB changes nothing written: pieces of odd sizes across
    /// several steps arrive whole and in order.
    #[test]
    fn writeback_requests_leave_the_bytes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut file = File::create(&path).unwrap();
        let want: Vec<u8> = (0..3 * WRITEBACK_STEP + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut w = Writeback::new(&mut file, Durability::Synced);
        for piece in want.chunks(1_000_003) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.written, want.len() as u64);
        assert!(
            w.started >= 2 * WRITEBACK_STEP,
            "a request per step: {}",
            w.started
        );
        drop(file);
        assert!(std::fs::read(&path).unwrap() == want);
    }

    /// Outputs committed together: nameless until then, each whole afterwards, and one whose
    /// folder went meanwhile fails alone; one dropped instead leaves nothing.
    #[test]
    fn outputs_committed_together_get_their_names_then_and_fail_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let targets = [
            dir.path().join("a"),
            gone.join("b"),
            dir.path().join("c"),
            dir.path().join("d"),
        ];
        let body =
            |k: usize| -> Vec<u8> { (0..100_000 + k).map(|i| (i * k % 256) as u8).collect() };
        let mut outputs: Vec<Unnamed> = targets
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let (n, w) = write_unnamed(t, None, &Cancel::new(), Durability::Synced, |w| {
                    w.write_all(&body(k)).map_err(Error::Write)?;
                    Ok(k)
                })
                .unwrap();
                assert_eq!(n, k);
                w
            })
            .collect();
        assert_eq!(
            names(dir.path()),
            ["gone"],
            "nothing named before the commit"
        );
        drop(outputs.pop());
        // An unnamed file is no entry: the folder can go, and its output cannot be named.
        std::fs::remove_dir(&gone).unwrap();
        let results = commit_all(outputs);
        assert!(results[0].is_ok() && results[2].is_ok());
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("gone/b") && err.contains("move the output into place"),
            "{err}"
        );
        assert_eq!(names(dir.path()), ["a", "c"]);
        assert!(std::fs::read(&targets[0]).unwrap() == body(0));
        assert!(std::fs::read(&targets[2]).unwrap() == body(2));
    }

    #[test]
    fn the_temporary_output_has_no_name_until_it_is_complete() {
        // A process killed while writing (SIGKILL, SIGBUS, OOM) leaves nothing behind.
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = Temp::create(dir.path()).unwrap();
        assert!(
            matches!(tmp, Temp::Unnamed(_)),
            "O_TMPFILE works on this file system"
        );
        tmp.file().write_all(b"half a model").unwrap();
        assert!(names(dir.path()).is_empty());
        drop(tmp);
        assert!(names(dir.path()).is_empty());

        let target = dir.path().join("out.tflite");
        std::fs::write(&target, b"old").unwrap();
        let mut tmp = Temp::create(dir.path()).unwrap();
        tmp.file().write_all(b"new").unwrap();
        tmp.persist(dir.path(), &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["out.tflite"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_output_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.tflite");
        std::fs::write(&target, b"old").unwrap();
        let r: Result<()> = write_atomic(&target, None, &Cancel::new(), |w| {
            w.write_all(b"partial").map_err(Error::Write)?;
            Err(Error::Write(std::io::Error::other("model broke halfway")))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["out.tflite"]);
    }

    #[test]
    fn releasing_a_mapped_input_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.tflite");
        // Mapped (above READ_LIMIT), and not a whole number of pages or of parts.
        let want: Vec<u8> = (0..(3 << 20) + 4099).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &want).unwrap();
        let data = map_input(&path).unwrap();
        assert!(matches!(data.data, Data::Map(_)));
        assert_eq!(&data[..], &want[..]);
        data.release();
        // Dropping the page table entries must leave the file and its cached pages alone.
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert_eq!(&map_input(&path).unwrap()[..], &want[..]);
    }

    #[test]
    fn an_input_that_changes_while_it_is_read_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tflite");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let data = map_input(&path).unwrap();
        assert_eq!(data.len(), 1000);
        data.check_unchanged().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"more").unwrap();
        let e = data.check_unchanged().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Changed {
                    before: 1000,
                    after: 1004,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("changed while it was being read"),
            "{e}"
        );
        // What was read stays as it was when read.
        assert!(data.iter().all(|&b| b == 7));
    }

    #[test]
    fn small_inputs_are_read_and_large_ones_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"0123456789").unwrap();
        assert!(matches!(map_input(&small).unwrap().data, Data::Read(_)));
        let large = dir.path().join("large");
        let f = File::create(&large).unwrap();
        f.set_len(READ_LIMIT + 1).unwrap(); // Sparse: no disk space used.
        let m = map_input(&large).unwrap();
        assert!(matches!(m.data, Data::Map(_)));
        assert_eq!(m.len() as u64, READ_LIMIT + 1);
    }
}
