//! Finding the files of a batch: inputs that mix files and folders, walked recursively.
//!
//! Every file gets a *relative path*: its place below the deepest folder that holds all the
//! inputs (the *root*), which is where its output goes under the output folder. With one
//! folder as input the root is that folder, so the output tree mirrors it.
//!
//! The walk (`walkdir`) follows symbolic links (a linked model is a model) but never into a
//! folder that is one of its own ancestors, so link loops end; it never enters the excluded folders (the
//! output folder, when it lies inside an input), so outputs are not read back as inputs. The
//! result is sorted by relative path and free of duplicates, so it does not depend on the
//! order in which the file system lists a folder; that is what makes `--shard` stable.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use walkdir::WalkDir;

/// What a found file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A `.tflite` file found in a folder, or a file named as an input that is named so or
    /// holds the `TFL3` identifier.
    Model,
    /// Any other regular file found in a folder or named as an input.
    Other,
}

/// One file of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where to read it (an input joined with the folders walked to reach it).
    pub path: PathBuf,
    /// Its place below [`Discovery::root`]: where its output goes below the output folder.
    pub relative: PathBuf,
    /// Model or other file.
    pub kind: Kind,
    /// Size in bytes (0 when it could not be read: a dangling link).
    pub bytes: u64,
}

/// Something the walk could not look into. Files below it are missing from the batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// An input or a folder could not be listed or examined.
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        /// The input or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A link to a folder that contains the link: following it would never end.
    #[error("{}: symbolic link loop (leads back to {}); not followed", path.display(), target.display())]
    SymlinkLoop {
        /// The link.
        path: PathBuf,
        /// The folder it leads back to.
        target: PathBuf,
    },
}

impl Problem {
    /// Whether the problem may hide models (an error) or is only worth a warning (a loop,
    /// whose files are all reached another way).
    pub fn is_error(&self) -> bool {
        matches!(self, Problem::Unreadable { .. })
    }

    /// The path concerned.
    pub fn path(&self) -> &Path {
        match self {
            Problem::Unreadable { path, .. } | Problem::SymlinkLoop { path, .. } => path,
        }
    }
}

/// A stable share of a batch: shard `index` of `count` (both counted from 1).
///
/// A file belongs to shard `1 + h mod count`, where `h` is [`shard_hash`] of its relative
/// path. Every file belongs to exactly one shard, and always the same one: the hash depends
/// only on the relative path, not on the machine, the order of listing or the Rust version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// A `--shard` value that is not `K/N` with `1 <= K <= N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard {given:?}: expected K/N with 1 <= K <= N, e.g. 1/4")]
pub struct ShardError {
    /// The text given.
    pub given: String,
}

impl Shard {
    /// Shard `index` of `count`, both counted from 1.
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if index == 0 || index > count {
            return Err(ShardError {
                given: format!("{index}/{count}"),
            });
        }
        Ok(Shard { index, count })
    }

    /// K, counted from 1.
    pub fn index(self) -> u32 {
        self.index
    }

    /// N, the number of shards.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the file at `relative` belongs to this shard.
    pub fn contains(self, relative: &Path) -> bool {
        shard_hash(relative) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let err = || ShardError {
            given: s.to_owned(),
        };
        let (k, n) = s.split_once('/').ok_or_else(err)?;
        let k: u32 = k.trim().parse().map_err(|_| err())?;
        let n: u32 = n.trim().parse().map_err(|_| err())?;
        Shard::new(k, n).map_err(|_| err())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The hash that assigns files to shards: 64-bit FNV-1a over the relative path's bytes
/// (components joined by `/`), then the MurmurHash3 `fmix64` finalizer, which spreads
/// FNV-1a's weak low bits so that `mod N` is balanced for every N.
pub fn shard_hash(relative: &Path) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (i, c) in relative.components().enumerate() {
        if i > 0 {
            eat(b"/");
        }
        eat(c.as_os_str().as_encoded_bytes());
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Options of [`discover`].
#[derive(Debug, Clone, Default)]
pub struct DiscoverOptions {
    /// Folders never entered below an input (the output folder), compared by identity
    /// (device and inode), so another spelling or a link to them is excluded too. Paths that
    /// do not exist are ignored.
    pub exclude: Vec<PathBuf>,
    /// Keep only this share of the files.
    pub shard: Option<Shard>,
}

/// What [`discover`] found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The deepest folder that holds every input, as an absolute path without `.` or `..`.
    pub root: PathBuf,
    /// The inputs that are folders (as given).
    pub folders: Vec<PathBuf>,
    /// The files of this shard, sorted by relative path, each once.
    pub files: Vec<Found>,
    /// Inputs and folders that could not be read, and link loops.
    pub problems: Vec<Problem>,
    /// Files that belong to other shards.
    pub outside_shard: usize,
}

impl Discovery {
    /// The models (kind [`Kind::Model`]).
    pub fn models(&self) -> impl Iterator<Item = &Found> {
        self.files.iter().filter(|f| f.kind == Kind::Model)
    }
}

/// Finds every `.tflite` file (and every other regular file) under `inputs`.
///
/// Models are the files whose name ends in `.tflite` (any case); an input that is a file is
/// also a model if it holds the `TFL3` identifier, whatever its name. Temporary files of an interrupted run
/// (`.tflq-*.partial`) and special files (sockets, pipes, devices) are not taken at all.
/// Never fails: what cannot be read is listed in [`Discovery::problems`].
pub fn discover(inputs: &[PathBuf], opts: &DiscoverOptions) -> Discovery {
    let cwd = current_dir();
    let root = root(inputs);
    let mut walk = Walk {
        exclude: opts
            .exclude
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect(),
        files: BTreeMap::new(),
        problems: Vec::new(),
    };
    let mut folders = Vec::new();
    for input in inputs {
        let abs = normalize(&cwd.join(input));
        let relative = abs.strip_prefix(&root).unwrap_or(&abs).to_owned();
        match fs::metadata(input) {
            Err(source) => walk.problems.push(Problem::Unreadable {
                path: input.clone(),
                source,
            }),
            Ok(meta) if meta.is_dir() => {
                folders.push(input.clone());
                walk.folder(input, &relative);
            }
            Ok(meta) if meta.is_file() => {
                let kind = named_kind(input);
                walk.add(input.clone(), relative, kind, meta.len());
            }
            Ok(_) => walk.problems.push(Problem::Unreadable {
                path: input.clone(),
                source: std::io::Error::other("not a regular file or folder"),
            }),
        }
    }
    let mut outside_shard = 0;
    let files = walk
        .files
        .into_values()
        .filter(|f| {
            let keep = opts.shard.is_none_or(|s| s.contains(&f.relative));
            outside_shard += usize::from(!keep);
            keep
        })
        .collect();
    Discovery {
        root,
        folders,
        files,
        problems: walk.problems,
        outside_shard,
    }
}

/// The deepest folder that holds every input: a folder input itself, a file's parent
/// folder (see [`Discovery::root`]). The current folder when there is no input.
pub fn root(inputs: &[PathBuf]) -> PathBuf {
    let cwd = current_dir();
    let bases: Vec<PathBuf> = inputs
        .iter()
        .map(|input| {
            let abs = normalize(&cwd.join(input));
            match abs.parent() {
                Some(parent) if !fs::metadata(input).is_ok_and(|m| m.is_dir()) => parent.to_owned(),
                _ => abs,
            }
        })
        .collect();
    common_ancestor(bases.iter().map(PathBuf::as_path)).unwrap_or(cwd)
}

fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

/// State of one discovery walk.
struct Walk {
    exclude: Vec<(u64, u64)>,
    files: BTreeMap<PathBuf, Found>,
    problems: Vec<Problem>,
}

impl Walk {
    fn add(&mut self, path: PathBuf, relative: PathBuf, kind: Kind, bytes: u64) {
        // The first spelling wins when inputs overlap (a folder and a file inside it).
        self.files.entry(relative.clone()).or_insert(Found {
            path,
            relative,
            kind,
            bytes,
        });
    }

    /// Walks `dir` (an input folder, whose place below the root is `relative`) with
    /// `walkdir`: entries sorted by name, links followed, loops reported instead of entered,
    /// excluded folders and temporary files of a killed run left out.
    fn folder(&mut self, dir: &Path, relative: &Path) {
        let exclude = self.exclude.clone();
        let walk = WalkDir::new(dir)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                if e.depth() == 0 {
                    return true;
                }
                if is_partial(e.file_name()) {
                    return false;
                }
                !(e.file_type().is_dir()
                    && fs::metadata(e.path()).is_ok_and(|m| exclude.contains(&(m.dev(), m.ino()))))
            });
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.walk_error(e, dir, relative);
                    continue;
                }
            };
            if entry.depth() == 0 || entry.file_type().is_dir() {
                continue;
            }
            let path = entry.path().to_owned();
            let rel = below(relative, dir, &path);
            if entry.file_type().is_file() {
                match entry.metadata() {
                    Ok(m) => self.add(path, rel, kind_of(entry.file_name()), m.len()),
                    Err(e) => self.walk_error(e, dir, relative),
                }
            }
        }
    }

    /// What `walkdir` could not do: a link loop, a dangling link (taken as a file of 0
    /// bytes, named like the link), or a folder or file that cannot be read.
    fn walk_error(&mut self, e: walkdir::Error, dir: &Path, relative: &Path) {
        let path = e.path().map_or_else(|| dir.to_owned(), Path::to_owned);
        if let Some(target) = e.loop_ancestor() {
            // A link back to an excluded folder (the output, in place) is not entered anyway.
            let excluded =
                fs::metadata(target).is_ok_and(|m| self.exclude.contains(&(m.dev(), m.ino())));
            if !excluded {
                let target = target.to_owned();
                self.problems.push(Problem::SymlinkLoop { path, target });
            }
            return;
        }
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && fs::metadata(&path).is_err() {
            let name = path.file_name().unwrap_or_default().to_owned();
            if !is_partial(&name) {
                let rel = below(relative, dir, &path);
                self.add(path, rel, kind_of(&name), 0);
            }
            return;
        }
        let source = e
            .into_io_error()
            .unwrap_or_else(|| std::io::Error::other("cannot walk the folder"));
        self.problems.push(Problem::Unreadable { path, source });
    }
}

/// The relative path of `path`, found by walking the input folder `dir` whose place below
/// the root is `relative`.
fn below(relative: &Path, dir: &Path, path: &Path) -> PathBuf {
    relative.join(path.strip_prefix(dir).unwrap_or(path))
}

/// A file named as an input (as a shell glob names them): a model if its name ends in
/// `.tflite` (as in a folder) or it holds the `TFL3` identifier at bytes 4 to 8 (a model of
/// another name); any other file is not a model (a README next to the models). A file that
/// cannot be read is taken as a model, so that its error is reported.
fn named_kind(path: &Path) -> Kind {
    if path.file_name().is_some_and(|n| kind_of(n) == Kind::Model) {
        return Kind::Model;
    }
    let mut head = [0u8; 8];
    let read = fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut head)
    });
    match read {
        Ok(()) if &head[4..8] != b"TFL3" => Kind::Other,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Kind::Other,
        _ => Kind::Model,
    }
}

/// Models are found by name: `.tflite`, any case.
fn kind_of(name: &std::ffi::OsStr) -> Kind {
    let is_model = Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tflite"));
    if is_model { Kind::Model } else { Kind::Other }
}

/// A temporary file of [`crate::io::write_atomic`], left by a killed run.
fn is_partial(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".tflq-") && name.ends_with(b".partial")
}

/// `path` without `.` components, `..` resolved by dropping the previous component (on the
/// text, not the file system: this only decides where outputs go, never what is read).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The longest common leading path of absolute paths.
fn common_ancestor<'a>(mut paths: impl Iterator<Item = &'a Path>) -> Option<PathBuf> {
    let first = paths.next()?.to_owned();
    Some(paths.fold(first, |acc, p| {
        acc.components()
            .zip(p.components())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // FNV-1a 64 of "a" and "foobar" are published test vectors.
        assert_eq!(shard_hash(Path::new("a")), fmix64(0xaf63_dc4c_8601_ec8c));
        assert_eq!(
            shard_hash(Path::new("foobar")),
            fmix64(0x8594_4171_f739_67e8)
        );
    }

    #[test]
    fn shard_hash_joins_components_with_slashes() {
        assert_eq!(
            shard_hash(Path::new("a/b/c.tflite")),
            shard_hash(Path::new("a//b/./c.tflite"))
        );
        assert_ne!(
            shard_hash(Path::new("a/b.tflite")),
            shard_hash(Path::new("ab.tflite"))
        );
    }

    #[test]
    fn shard_hash_is_pinned() {
        // Values from an independent implementation (Python, docs/batch.md). Changing the
        // hash would move files between the shards of a job array that is already running.
        assert_eq!(
            shard_hash(Path::new("vision/mobilenet.tflite")),
            0x76f2_d2fa_b722_7a04
        );
        assert_eq!(shard_hash(Path::new("a/b/c.tflite")), 0x2600_5985_94ad_3114);
        let shard = |k, n| Shard::new(k, n).unwrap();
        assert!(shard(9, 10).contains(Path::new("vision/mobilenet.tflite")));
        assert!(shard(3, 3).contains(Path::new("a/b/c.tflite")));
    }

    #[test]
    fn shards_cover_every_path_once_and_are_balanced() {
        for n in 1..=8u32 {
            let shards: Vec<Shard> = (1..=n).map(|k| Shard::new(k, n).unwrap()).collect();
            let mut counts = vec![0usize; n as usize];
            for i in 0..4000 {
                let p = PathBuf::from(format!("models/group{}/model_{i}.tflite", i % 7));
                let owners: Vec<usize> = (0..shards.len())
                    .filter(|&s| shards[s].contains(&p))
                    .collect();
                assert_eq!(
                    owners.len(),
                    1,
                    "{} in shards {owners:?} of {n}",
                    p.display()
                );
                counts[owners[0]] += 1;
            }
            let expected = 4000 / n as usize;
            for c in counts {
                assert!(
                    c.abs_diff(expected) * 10 < expected,
                    "n={n}: {c} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn shard_parses_k_of_n() {
        let s: Shard = "2/5".parse().unwrap();
        assert_eq!((s.index(), s.count()), (2, 5));
        assert_eq!(s.to_string(), "2/5");
        for bad in ["0/3", "4/3", "1", "a/b", "1/0", "-1/3", ""] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert_eq!(err.given, bad);
            assert!(err.to_string().contains("1 <= K <= N"), "{err}");
        }
    }

    #[test]
    fn normalize_drops_dots() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/a/b/")), PathBuf::from("/a/b"));
    }

    #[test]
    fn common_ancestor_of_siblings_is_their_parent() {
        let paths = [Path::new("/s/models/a"), Path::new("/s/models/b/c")];
        assert_eq!(
            common_ancestor(paths.into_iter()),
            Some(PathBuf::from("/s/models"))
        );
        let one = [Path::new("/s/models")];
        assert_eq!(
            common_ancestor(one.into_iter()),
            Some(PathBuf::from("/s/models"))
        );
    }

    #[test]
    fn overlapping_inputs_give_each_file_once_and_exclusions_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("s");
        for rel in [
            "a/m.tflite",
            "a/deep/n.TFLITE",
            "a/x.txt",
            "b/o.tflite",
            "b/out/old.tflite",
        ] {
            let p = s.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, rel).unwrap();
        }
        fs::write(s.join("a/.tflq-XYZ.partial"), "left by a killed run").unwrap();
        let inputs = [
            s.join("a"),
            s.join("b"),
            s.join("a/m.tflite"),
            s.join("a/x.txt"),
        ];
        let found = discover(
            &inputs,
            &DiscoverOptions {
                exclude: vec![s.join("b/out"), s.join("does-not-exist")],
                shard: None,
            },
        );
        assert_eq!(found.root, s);
        let got: Vec<(String, Kind)> = found
            .files
            .iter()
            .map(|f| (f.relative.to_string_lossy().into_owned(), f.kind))
            .collect();
        let want = [
            ("a/deep/n.TFLITE", Kind::Model),
            ("a/m.tflite", Kind::Model),
            ("a/x.txt", Kind::Other),
            ("b/o.tflite", Kind::Model),
        ];
        let want: Vec<(String, Kind)> = want.iter().map(|(p, k)| ((*p).to_owned(), *k)).collect();
        assert_eq!(got, want);
        assert_eq!(found.files[1].bytes, "a/m.tflite".len() as u64);
        assert_eq!(found.folders, [s.join("a"), s.join("b")]);
        assert!(found.problems.is_empty());
    }

    #[test]
    fn a_link_loop_is_reported_once_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("s");
        fs::create_dir_all(s.join("x/y")).unwrap();
        fs::write(s.join("x/y/m.tflite"), "m").unwrap();
        std::os::unix::fs::symlink("../..", s.join("x/y/up")).unwrap();
        let found = discover(std::slice::from_ref(&s), &DiscoverOptions::default());
        assert_eq!(found.files.len(), 1);
        let [Problem::SymlinkLoop { path, target }] = found.problems.as_slice() else {
            panic!("{:?}", found.problems);
        };
        assert_eq!(path, &s.join("x/y/up"));
        assert_eq!(target, &s);
    }

    #[test]
    fn dangling_links_partials_and_the_output_folder_are_handled_without_walking_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("s");
        fs::create_dir_all(s.join("out/deeper")).unwrap();
        fs::create_dir_all(s.join(".tflq-x.partial")).unwrap();
        fs::write(s.join(".tflq-x.partial/m.tflite"), "m").unwrap();
        fs::write(s.join(".tflq-y.partial"), "half").unwrap();
        fs::write(s.join("out/deeper/o.tflite"), "o").unwrap();
        fs::write(s.join("z.tflite"), "zz").unwrap();
        std::os::unix::fs::symlink("nowhere.tflite", s.join("gone.tflite")).unwrap();
        // A link from inside the output folder back to the input: no loop reported, since
        // the output is never entered; a link to the output from elsewhere is not either.
        std::os::unix::fs::symlink("..", s.join("out/up")).unwrap();
        std::os::unix::fs::symlink("out", s.join("to-out")).unwrap();
        let opts = DiscoverOptions {
            exclude: vec![s.join("out")],
            shard: None,
        };
        let found = discover(std::slice::from_ref(&s), &opts);
        let got: Vec<(String, u64)> = found
            .files
            .iter()
            .map(|f| (f.relative.to_string_lossy().into_owned(), f.bytes))
            .collect();
        assert_eq!(
            got,
            [("gone.tflite".to_owned(), 0), ("z.tflite".to_owned(), 2)]
        );
        assert!(found.problems.is_empty(), "{:?}", found.problems);
    }

    #[test]
    fn kinds_and_partials_are_recognized_by_name() {
        use std::ffi::OsStr;
        assert_eq!(kind_of(OsStr::new("m.tflite")), Kind::Model);
        assert_eq!(kind_of(OsStr::new("M.TFLite")), Kind::Model);
        assert_eq!(kind_of(OsStr::new("m.tflite.bak")), Kind::Other);
        assert_eq!(kind_of(OsStr::new("tflite")), Kind::Other);
        assert!(is_partial(OsStr::new(".tflq-a1B2c3.partial")));
        assert!(!is_partial(OsStr::new("tflq-a.partial")));
    }
}
