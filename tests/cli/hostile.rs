//! Hostile input through the binary: every ill-formed model and every file-system fault ends
//! in exit 1 with a message naming the file and the fault, the input unchanged, and no
//! output or temporary file left behind.
//!
//! Tests run as root here, so permission bits stop nothing: unreadable inputs are made
//! with a path through a regular file, a FIFO, a socket, a device; unwritable folders with a
//! read-only tmpfs (skipped, with a note, where mounting is not allowed). A full disk is
//! `/dev/full` and a 64 KiB tmpfs.

use std::os::unix::fs::FileTypeExt;
use std::process::Command as Process;
use std::time::Duration;

use crate::attacks::{ATTACKS, read_fixture};
use crate::*;

/// Runs `tflq quantize IN -o OUT [extra]`; returns (exit code, stderr).
fn run(input: &Path, output: &Path, extra: &[&str]) -> (i32, String) {
    let mut cmd = tflq();
    cmd.arg("quantize")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(extra);
    status(cmd)
}

/// Runs a read-only command (`inspect`, `report`) on `model`; returns (exit code, stderr).
fn read_only(command: &str, model: &Path) -> (i32, String) {
    let mut cmd = tflq();
    cmd.arg(command).arg(model);
    status(cmd)
}

fn status(mut cmd: assert_cmd::Command) -> (i32, String) {
    let out = cmd.timeout(Duration::from_secs(60)).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts a clean refusal: exit 1, one message naming `named` and saying each of `says`.
fn refused(code: i32, stderr: &str, named: &Path, says: &[&str]) {
    // The output being the input is a usage error, as for a folder (issue 11, item 9).
    let want = if says.contains(&"output is the input file") {
        2
    } else {
        1
    };
    assert_eq!(code, want, "{stderr}");
    assert!(stderr.starts_with("tflq: error: "), "{stderr}");
    assert!(
        stderr.contains(&*named.to_string_lossy()),
        "{stderr:?} does not name {}",
        named.display()
    );
    for s in says {
        assert!(stderr.contains(s), "{stderr:?} lacks {s:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A copy of fixture `name` in `dir`, and its bytes.
fn copy(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn every_ill_formed_model_is_refused_by_name_and_leaves_nothing() {
    let dir = tmp();
    let input = dir.path().join("damaged.tflite");
    let output = dir.path().join("out.tflite");
    for attack in ATTACKS {
        let bytes = (attack.make)();
        std::fs::write(&input, &bytes).unwrap();
        let (code, stderr) = run(&input, &output, &[]);
        refused(code, &stderr, &input, attack.expect);
        for command in ["inspect", "report"] {
            let (code, stderr) = read_only(command, &input);
            refused(code, &stderr, &input, attack.expect);
        }
        assert_eq!(entries(dir.path()), ["damaged.tflite"], "{}", attack.name);
        assert_eq!(std::fs::read(&input).unwrap(), bytes, "{}", attack.name);
    }
}

#[test]
fn a_refused_model_leaves_an_existing_output_untouched() {
    let dir = tmp();
    let input = dir.path().join("bad.tflite");
    std::fs::write(&input, &read_fixture("mlp.tflite")[..5000]).unwrap();
    let output = dir.path().join("out.tflite");
    std::fs::write(&output, b"precious").unwrap();
    let (code, stderr) = run(&input, &output, &[]);
    refused(
        code,
        &stderr,
        &input,
        &["truncated: the file has 5000 bytes, the model refers to byte "],
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"precious");
    assert_eq!(entries(dir.path()), ["bad.tflite", "out.tflite"]);
}

#[test]
fn inputs_that_cannot_be_read_are_refused_without_blocking() {
    let dir = tmp();
    let (model, bytes) = copy(dir.path(), "mlp.tflite");
    let output = dir.path().join("out.tflite");

    // A path through a regular file, as if it were a folder.
    let through = model.join("inner.tflite");
    let (code, stderr) = run(&through, &output, &[]);
    refused(code, &stderr, &through, &["Not a directory"]);
    let (code, stderr) = read_only("report", &through);
    refused(code, &stderr, &through, &["Not a directory"]);

    // A FIFO (opening it would block until a writer came), a socket, a device that never
    // ends; and a folder where one model is expected (`quantize` takes a folder as a batch).
    let folder = dir.path().join("folder.tflite");
    std::fs::create_dir(&folder).unwrap();
    let fifo = dir.path().join("fifo.tflite");
    assert!(
        Process::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let socket = dir.path().join("socket.tflite");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for input in [&fifo, &socket, Path::new("/dev/zero")] {
        let (code, stderr) = run(input, &output, &[]);
        refused(code, &stderr, input, &["not a regular file"]);
        let (code, stderr) = read_only("inspect", input);
        refused(code, &stderr, input, &["not a regular file"]);
    }
    let (code, stderr) = read_only("inspect", &folder);
    refused(code, &stderr, &folder, &["not a regular file"]);
    // A missing file.
    let missing = dir.path().join("missing.tflite");
    let (code, stderr) = run(&missing, &output, &[]);
    refused(code, &stderr, &missing, &["No such file or directory"]);

    assert_eq!(std::fs::read(&model).unwrap(), bytes);
    assert_eq!(
        entries(dir.path()),
        [
            "fifo.tflite",
            "folder.tflite",
            "mlp.tflite",
            "socket.tflite"
        ]
    );
}

#[test]
fn outputs_that_cannot_be_written_are_refused_and_leave_nothing() {
    let dir = tmp();
    let (model, bytes) = copy(dir.path(), "mlp.tflite");

    // Missing folders are created; one that cannot be (a file in the way) is named.
    let blocked = model.join("sub/out.tflite");
    let (code, stderr) = run(&model, &blocked, &[]);
    refused(
        code,
        &stderr,
        &model.join("sub"),
        &["cannot create the output folder", "Not a directory"],
    );

    let under_a_file = model.join("out.tflite");
    let (code, stderr) = run(&model, &under_a_file, &[]);
    refused(code, &stderr, &under_a_file, &["Not a directory"]);

    let dangling = dir.path().join("dangling.tflite");
    std::os::unix::fs::symlink(dir.path().join("nowhere/x.tflite"), &dangling).unwrap();
    let (code, stderr) = run(&model, &dangling, &[]);
    refused(code, &stderr, &dangling, &["symbolic link", "No such file"]);

    assert_eq!(std::fs::read(&model).unwrap(), bytes);
    assert_eq!(entries(dir.path()), ["dangling.tflite", "mlp.tflite"]);
}

#[test]
fn a_full_device_gives_no_space_and_stays_a_device() {
    let full = Path::new("/dev/full");
    let before = std::fs::metadata(full).unwrap();
    assert!(before.file_type().is_char_device());
    let (code, stderr) = run(&fixture("mlp.tflite"), full, &[]);
    refused(code, &stderr, full, &["No space left on device"]);
    let after = std::fs::metadata(full).unwrap();
    assert!(after.file_type().is_char_device(), "/dev/full was replaced");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(before.rdev(), after.rdev());
    assert!(
        !entries(Path::new("/dev"))
            .iter()
            .any(|e| e.starts_with(".tflq-")),
        "a temporary file was left in /dev"
    );

    // A device that takes everything works like a file.
    let (code, stderr) = run(&fixture("mlp.tflite"), Path::new("/dev/null"), &["-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
}

/// Mounts a tmpfs at `at` with `options`, or says why not.
fn mount_tmpfs(at: &Path, options: &str) -> bool {
    let ok = Process::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: cannot mount a tmpfs here (not root?); skipping this test");
    }
    ok
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_file_system_leaves_the_old_output_and_no_partial_file() {
    let dir = tmp();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    if !mount_tmpfs(&small, "size=64k") {
        return;
    }
    let _unmount = Unmount(small.clone());
    // cnn.tflite quantizes to about 44 KB: the first run fits, the second does not, since
    // its new file must exist beside the old one until the rename.
    let output = small.join("out.tflite");
    let (code, stderr) = run(&fixture("cnn.tflite"), &output, &["-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let first = std::fs::read(&output).unwrap();
    let (code, stderr) = run(&fixture("cnn.tflite"), &output, &["--min-elements", "0"]);
    refused(code, &stderr, &output, &["No space left on device"]);
    assert_eq!(std::fs::read(&output).unwrap(), first);
    assert_eq!(entries(&small), ["out.tflite"]);
}

#[test]
fn a_read_only_folder_is_refused() {
    let dir = tmp();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    if !mount_tmpfs(&ro, "ro,size=64k") {
        return;
    }
    let _unmount = Unmount(ro.clone());
    let output = ro.join("out.tflite");
    let (code, stderr) = run(&fixture("mlp.tflite"), &output, &[]);
    refused(code, &stderr, &output, &["Read-only file system"]);
    assert!(!stderr.contains(".partial"), "{stderr}");
    assert!(entries(&ro).is_empty());
}

#[test]
fn a_fifo_output_is_written_when_read_and_refused_when_not() {
    let dir = tmp();
    let fifo = dir.path().join("out.fifo");
    assert!(
        Process::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Nobody reads: a clean error at once rather than waiting forever.
    let (code, stderr) = run(&fixture("mlp.tflite"), &fifo, &[]);
    refused(code, &stderr, &fifo, &["FIFO that nothing reads"]);

    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    // The reader may not have opened it yet: retry until it has.
    let mut code = 1;
    for _ in 0..100 {
        (code, _) = run(&fixture("mlp.tflite"), &fifo, &["-q"]);
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(code, 0);
    let through_fifo = reader.join().unwrap();
    let file = dir.path().join("out.tflite");
    assert_eq!(run(&fixture("mlp.tflite"), &file, &["-q"]).0, 0);
    assert_eq!(through_fifo, std::fs::read(&file).unwrap());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn symlinks_are_followed_on_both_sides() {
    let dir = tmp();
    let (model, bytes) = copy(dir.path(), "mlp.tflite");
    let input_link = dir.path().join("input-link.tflite");
    std::os::unix::fs::symlink("mlp.tflite", &input_link).unwrap();
    let target = dir.path().join("target.tflite");
    std::fs::write(&target, b"old").unwrap();
    let output_link = dir.path().join("output-link.tflite");
    std::os::unix::fs::symlink("target.tflite", &output_link).unwrap();

    let (code, stderr) = run(&input_link, &output_link, &["-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let meta = std::fs::symlink_metadata(&output_link).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "the output link is still a link"
    );
    let written = std::fs::read(&target).unwrap();
    assert!(tflq::Model::parse(&written).is_ok());
    assert!(written.len() * 3 < bytes.len());
    assert_eq!(std::fs::read(&model).unwrap(), bytes);
    assert_eq!(
        entries(dir.path()),
        [
            "input-link.tflite",
            "mlp.tflite",
            "output-link.tflite",
            "target.tflite"
        ]
    );
}

#[test]
fn the_input_as_output_through_a_link_needs_in_place() {
    let dir = tmp();
    let (model, bytes) = copy(dir.path(), "mlp.tflite");
    let soft = dir.path().join("soft.tflite");
    std::os::unix::fs::symlink("mlp.tflite", &soft).unwrap();
    let hard = dir.path().join("hard.tflite");
    std::fs::hard_link(&model, &hard).unwrap();
    for output in [&model, &soft, &hard] {
        let (code, stderr) = run(&model, output, &[]);
        refused(
            code,
            &stderr,
            output,
            &["output is the input file", "--in-place"],
        );
        assert_eq!(std::fs::read(&model).unwrap(), bytes);
    }
    assert_eq!(
        entries(dir.path()),
        ["hard.tflite", "mlp.tflite", "soft.tflite"]
    );

    // With --in-place through the symbolic link: the file it points at is replaced, the
    // link stays, and no temporary file is left.
    let (code, stderr) = run(&soft, &soft, &["--in-place", "-q"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(
        std::fs::symlink_metadata(&soft)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let now = std::fs::read(&model).unwrap();
    assert!(tflq::Model::parse(&now).is_ok());
    assert!(now.len() * 3 < bytes.len());
    // The hard link is another name of the old file: it keeps the old bytes.
    assert_eq!(std::fs::read(&hard).unwrap(), bytes);
    assert_eq!(
        entries(dir.path()),
        ["hard.tflite", "mlp.tflite", "soft.tflite"]
    );
}

/// Damaged copies of every fixture through the binary: a clean success or a clean error,
/// never a crash, the input unchanged, no partial file. (The in-process mutation run in
/// `tests/mutate` covers far more cases; this checks the binary's side of it.)
#[test]
fn damaged_fixtures_end_in_a_clean_success_or_a_clean_error() {
    let dir = tmp();
    let input = dir.path().join("in.tflite");
    let output = dir.path().join("out.tflite");
    let mut rng = crate::rng::Rng::new(77);
    let mut outcomes = [0; 2];
    for (k, path) in all_fixtures().iter().enumerate() {
        let original = std::fs::read(path).unwrap();
        for _ in 0..4 {
            let mut bytes = original.clone();
            // Damage inside the flatbuffer's first part, where the structure is.
            let span = bytes.len().min(4096);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(span);
                bytes[at] = rng.next() as u8;
            }
            if rng.one_in(4) {
                bytes.truncate(rng.below(bytes.len()));
            }
            std::fs::write(&input, &bytes).unwrap();
            let (code, stderr) = run(&input, &output, &["-q"]);
            assert!(code == 0 || code == 1, "fixture {k}: exit {code}: {stderr}");
            assert_eq!(std::fs::read(&input).unwrap(), bytes);
            if code == 0 {
                assert!(tflq::Model::parse(&std::fs::read(&output).unwrap()).is_ok());
                std::fs::remove_file(&output).unwrap();
            } else {
                refused(code, &stderr, &input, &[]);
            }
            for command in ["inspect", "report"] {
                let (again, stderr) = read_only(command, &input);
                assert_eq!(again, code, "{command} and quantize disagree: {stderr}");
                if again == 1 {
                    refused(again, &stderr, &input, &[]);
                }
            }
            assert_eq!(entries(dir.path()), ["in.tflite"]);
            outcomes[code as usize] += 1;
        }
    }
    assert!(outcomes[1] > 0, "{outcomes:?}");
}
