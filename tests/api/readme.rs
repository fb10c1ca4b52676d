//! The README's quick start, pasted as one block into bash, with the real binary: the server
//! starts on the embedded default, the demo saga completes, the HTTP/JSON API takes a saga,
//! and a saga killed mid-flight with `kill -9` is finished by the restarted server (issue 14,
//! "the README's quick start as one pasted block"). Only the build lines are replaced: the
//! test puts the binary cargo built for it on `PATH`.
//!
//! It uses the README's fixed ports (50051, 50052), as a newcomer would; nothing else in the
//! suite listens on them.
#![cfg(feature = "duckdb")]

use std::process::Command;

/// The first `sh` block after the quick start heading.
fn quick_start() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Quick start").expect("a quick start section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

#[test]
fn the_readme_quick_start_runs_as_one_pasted_block() {
    let block = quick_start();
    assert!(block.contains("cargo build --release") && block.contains("export PATH="), "{block}");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_sagalog")).parent().unwrap().to_owned();
    let script: String = block
        .lines()
        .map(|line| match line {
            l if l.starts_with("cargo build") => "true  # built by cargo for this test".to_owned(),
            l if l.starts_with("export PATH=") => format!("export PATH=\"{}:$PATH\"", bin.display()),
            l => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    // `set -e`: any command of the block that fails fails the test; a server left running is
    // killed on the way out.
    let wrapped = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}\nwait\n");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .current_dir(dir.path())
        .env_remove("SAGALOG_SERVER")
        .env_remove("SAGALOG_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let said = format!("--- script\n{wrapped}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "the quick start failed ({}):\n{said}", out.status);
    for line in ["saga demo-1 COMPLETED", "saga demo-3 COMPLETED", "\"saga_id\":\"demo-2\""] {
        assert!(stdout.contains(line), "no {line:?}:\n{said}");
    }
    // demo-3 was killed mid-flight and finished by the restarted server.
    let status = stdout.rfind("\"recovery_count\"").map(|at| &stdout[at..]).unwrap_or_default();
    assert!(status.starts_with("\"recovery_count\":1"), "demo-3 was not recovered mid-flight:\n{said}");
}
