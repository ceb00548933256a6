//! A cancel token: the caller's way to stop work in progress (the command line cancels it on
//! Ctrl-C). Cheap to clone; every clone shares one flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Asks the work it is given to stop: no new file is started, and writes in progress stop at
/// their next block, remove their temporary files and fail with an I/O error saying
/// "interrupted". [`Cancel::cancel`] is safe to call from a signal handler thread.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every holder of a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called on this token or a clone of it.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_every_clone_and_only_them() {
        let a = Cancel::new();
        let b = a.clone();
        let other = Cancel::new();
        assert!(!a.is_cancelled() && !b.is_cancelled());
        std::thread::spawn(move || b.cancel()).join().unwrap();
        assert!(a.is_cancelled());
        assert!(!other.is_cancelled(), "tokens made apart are independent");
        assert!(!Cancel::default().is_cancelled());
    }

    #[test]
    fn a_cancelled_token_stops_an_atomic_write_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let cancel = Cancel::new();
        let r = crate::io::write_atomic(&target, None, &cancel, |w| {
            w.write_all(b"first block").map_err(crate::Error::Write)?;
            cancel.cancel();
            w.write_all(b"second block").map_err(crate::Error::Write)
        });
        let e = r.unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }
}
