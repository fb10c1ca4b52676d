//! Crash safety by killing a real process: a child appends with `sync=always` from several
//! tasks and prints every LSN it was acknowledged; we SIGKILL it at random moments, reopen, and
//! check that every acknowledged LSN is present with its exact payload. Many rounds on the same
//! data directory, bounded in time.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{read_all, sagalog_bin};
use rand::{Rng, SeedableRng};
use sagalog::cli::crash_payload;
use sagalog::journal::{Journal, Options};

const RECORD_BYTES: usize = 180;
const ROUNDS_MAX: usize = 30;
const TIME_BUDGET: Duration = Duration::from_secs(25);

/// Every LSN a SIGKILLed child reported as acknowledged is present and intact after reopen,
/// across many kill/reopen rounds (segment rotations included).
#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    let seed: u64 = std::env::var("SAGALOG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set SAGALOG_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<u64, u64> = HashMap::new(); // lsn -> payload seed
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && started.elapsed() < TIME_BUDGET {
        rounds += 1;
        let mut child = Command::new(sagalog_bin())
            .args(["debug", "append-loop", "--appenders", "8", "--segment-bytes", "16384"])
            .arg("--record-bytes")
            .arg(RECORD_BYTES.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_round = 0;
        for line in lines.lock().unwrap().iter() {
            // The last line may be cut by the kill; only complete `ack <lsn> <seed>` lines count.
            let parts: Vec<&str> = line.split(' ').collect();
            if let ["ack", lsn, seed] = parts.as_slice()
                && let (Ok(lsn), Ok(seed)) = (lsn.parse(), seed.parse())
            {
                assert!(acked.insert(lsn, seed).is_none(), "lsn {lsn} acknowledged twice");
                this_round += 1;
            }
        }
        // Reopen (which repairs a torn tail) as the next server start would, then check.
        let opened =
            Journal::open_dir(dir.path(), Options::default()).unwrap_or_else(|e| panic!("round {rounds}: {e}"));
        opened.journal.shutdown_blocking().unwrap();
        let (records, summary) = read_all(dir.path());
        assert!(summary.problem.is_none(), "round {rounds}: {:?}", summary.problem);
        let on_disk: HashMap<u64, &[u8]> = records.iter().map(|r| (r.0, r.2.as_slice())).collect();
        for (lsn, seed) in &acked {
            let found = on_disk.get(lsn).unwrap_or_else(|| panic!("round {rounds}: acknowledged lsn {lsn} is missing"));
            assert_eq!(*found, crash_payload(*seed, RECORD_BYTES).as_slice(), "round {rounds}: lsn {lsn} damaged");
        }
        eprintln!("round {rounds}: {this_round} acks, {} records on disk", records.len());
    }
    assert!(rounds >= 5, "the time budget allowed only {rounds} rounds");
    assert!(acked.len() > 100, "the child acknowledged too little ({}) for the test to mean anything", acked.len());
}
