//! The first start of a data directory: the generated `sagalog.toml` and the new directories
//! are durable before anything relies on them, and a config file left empty or cut short (by
//! a power loss while it was written, before writes became atomic) is reported as such instead
//! of as whatever its missing lines make it look like. Owns no server: it drives `Node::start`
//! and the `sagalog serve` binary only as far as their first boot.

use crate::api_support;

use std::path::Path;
use std::process::{Command, Stdio};

use sagalog::catalog::EMBEDDED_DEFAULT;
use sagalog::node::{CONFIG_FILE, Node};

/// An empty, zero-filled or cut-short `sagalog.toml` is refused with a message that says so
/// (it used to start, or to fail with a misleading auth error about missing tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_zero_filled_or_cut_short_config_is_reported_as_damaged() {
    let half = &EMBEDDED_DEFAULT[..EMBEDDED_DEFAULT.len() / 2];
    for (name, text, expect) in [
        ("empty", String::new(), "empty"),
        ("blank", "\n\n".to_owned(), "empty"),
        ("zero-filled", "\0".repeat(4096), "zero"),
        ("cut short", half.to_owned(), "cut short"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(CONFIG_FILE), text).unwrap();
        let message = match Node::start(&data, None).await {
            Ok(_) => panic!("{name}: a damaged config must not start"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(CONFIG_FILE) && message.contains(expect), "{name}: {message}");
        assert!(!message.contains("token"), "{name}: not an auth error: {message}");
    }
}

/// One syscall line of `strace -y` output, e.g. `123 fsync(5</d/sagalog.toml.tmp>) = 0`.
fn calls(log: &str) -> Vec<String> {
    log.lines().filter(|l| !l.contains("resumed>") && l.contains(" = 0")).map(str::to_owned).collect()
}

fn position(calls: &[String], what: &str, pred: impl Fn(&str) -> bool) -> usize {
    calls.iter().position(|c| pred(c)).unwrap_or_else(|| panic!("no {what} in the trace:\n{}", calls.join("\n")))
}

fn is_sync_of(call: &str, path: &Path) -> bool {
    let fd = format!("<{}>)", path.display());
    (call.contains(" fsync(") || call.contains(" fdatasync(")) && call.contains(&fd)
}

/// Runs `sagalog serve` under strace on a fresh data directory (an unparsable `--listen` makes
/// it exit right after its first boot) and returns the successful calls it traced.
fn trace_first_boot(data: &Path, config: Option<&Path>) -> Option<Vec<String>> {
    let log = data.with_extension("strace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_sagalog"))
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(data);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = match cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output() {
        Ok(out) => out,
        Err(e) => {
            api_support::skip_or_fail(&format!("first_boot_fsyncs_*: strace is not installed ({e})"));
            return None;
        }
    };
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    if !trace.contains("mkdir") {
        api_support::skip_or_fail(&format!(
            "first_boot_fsyncs_*: strace cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return None;
    }
    Some(calls(&trace))
}

/// First boot without `--config`: the generated config is written to a temporary file, synced,
/// renamed into place, and the directory synced after the rename; the new data directory and
/// its `journal/` are synced into their parents before the first segment is created.
#[test]
fn first_boot_fsyncs_the_generated_config_and_the_new_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let data = root.join("data");
    let Some(calls) = trace_first_boot(&data, None) else { return };
    let tmp = data.join(format!("{CONFIG_FILE}.tmp"));
    let synced_tmp = position(&calls, "fsync of the config's temporary file", |c| is_sync_of(c, &tmp));
    let renamed = position(&calls, "rename of the config into place", |c| {
        c.contains("rename") && c.contains(&format!("\"{}\"", data.join(CONFIG_FILE).display()))
    });
    assert!(synced_tmp < renamed, "the config is synced before it is renamed into place");
    assert!(
        calls[renamed..].iter().any(|c| is_sync_of(c, &data)),
        "the data directory is synced after the config's rename:\n{}",
        calls.join("\n")
    );
    assert_new_directories_synced(&calls, &root, &data);
    assert!(std::fs::read_to_string(data.join(CONFIG_FILE)).unwrap() == EMBEDDED_DEFAULT);
}

/// First boot with `--config`: no config is written, and the new directories are still synced
/// into their parents before the first segment is created.
#[test]
fn first_boot_with_a_config_fsyncs_the_new_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let config = api_support::write_config(&root, api_support::CONFIG);
    let data = root.join("data");
    let Some(calls) = trace_first_boot(&data, Some(&config)) else { return };
    assert_new_directories_synced(&calls, &root, &data);
}

fn assert_new_directories_synced(calls: &[String], root: &Path, data: &Path) {
    let first_segment = position(calls, "rename of the first segment", |c| {
        c.contains("rename") && c.contains("00000000000000000001.wal\"")
    });
    for (created, parent) in [(data.to_path_buf(), root.to_path_buf()), (data.join("journal"), data.to_path_buf())] {
        let made =
            position(calls, "mkdir", |c| c.contains("mkdir") && c.contains(&format!("\"{}\"", created.display())));
        assert!(
            calls[made..first_segment].iter().any(|c| is_sync_of(c, &parent)),
            "{} is synced after {} is created and before the journal is used:\n{}",
            parent.display(),
            created.display(),
            calls.join("\n")
        );
    }
}
