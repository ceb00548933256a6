//! Memory stays near the file size, whatever the file says.
//!
//! Peak resident memory is read from `/proc/self/status` (`VmHWM`) after resetting it
//! through `/proc/self/clear_refs`, around each case, in a child process of this test binary
//! that runs nothing else (the other tests of this binary run in parallel threads and would
//! count too). A counting allocator would be exact but needs `unsafe`; resident memory
//! misses allocations that are never touched, but those cost nothing, and a reader that
//! copies what shared offsets claim touches all of it.

use crate::attacks::{ATTACKS, table_bomb, vector_bomb};
use crate::harness::{self, Tally, env_u64};

/// Allowed growth of resident memory while one case runs: the entry points hold the input
/// (the caller's), the rewritten model and a second rewrite of it, and a few fixed buffers.
fn bound(len: usize) -> u64 {
    (8 << 20) + 16 * len as u64
}

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Peak growth of resident memory while `f` runs.
fn peak_growth(f: impl FnOnce()) -> u64 {
    let before = status("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak (Linux >= 4.0)");
    f();
    status("VmHWM:").saturating_sub(before)
}

#[test]
#[ignore = "run by memory_stays_near_the_file_size in a process of its own"]
fn memory_child() {
    if std::env::var_os("TFLQ_MEMORY_CHILD").is_none() {
        return;
    }
    // Warm up: thread pools and lazy statics are not the cases' doing.
    let seeds = harness::seeds();
    for s in seeds {
        harness::check(&s.bytes, &mut Tally::default()).unwrap();
    }
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("table bomb".to_owned(), table_bomb()),
        ("vector bomb".to_owned(), vector_bomb()),
    ];
    cases.extend(ATTACKS.iter().map(|a| (a.name.to_owned(), (a.make)())));
    cases.extend(seeds.iter().map(|s| (s.name.clone(), s.bytes.clone())));
    let n = env_u64("TFLQ_MEMORY_CASES", 400);
    cases.extend((0..n).map(|i| harness::case(99, i)));
    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for (what, bytes) in &cases {
        let growth = peak_growth(|| {
            let _ = harness::check(bytes, &mut Tally::default());
        });
        let ratio = growth as f64 / bound(bytes.len()) as f64;
        if ratio > worst.0 {
            worst = (ratio, what.clone());
        }
        if growth > bound(bytes.len()) {
            failures.push(format!(
                "{what}: {growth} bytes for a {}-byte file (bound {})",
                bytes.len(),
                bound(bytes.len())
            ));
        }
    }
    eprintln!(
        "memory: {} cases, worst at {:.0}% of the bound ({})",
        cases.len(),
        worst.0 * 100.0,
        worst.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn memory_stays_near_the_file_size() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "memory::memory_child",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env("TFLQ_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let Some(at) = stderr.find("memory: ") else {
        panic!("the child ran no cases: {stderr}");
    };
    eprintln!("{}", stderr[at..].lines().next().unwrap_or_default());
}
