//! `sagalog replay`: the dry-run plan on a crafted data directory (in-doubt steps with and
//! without markers, a STUCK saga, compensating sagas), proven to change no byte; offline
//! replay ending in the same states as a serve-style start; lock refusal and bad input.

use crate::ops_support;

use std::path::Path;

use ops_support::*;
use sagalog::engine::{Outcome, Record, SagaDefinition, StepCall, Value};
use sagalog::participant::Direction::{Compensate, Forward};
use serde_json::Value as Json;

/// [fragile, record(rows -1)]: step 1 fails permanently, the compensation of step 0 fails
/// permanently too: STUCK.
fn stuck_saga(id: &str) -> SagaDefinition {
    let text = |s: &str| Value::Text(s.to_owned());
    SagaDefinition {
        id: id.into(),
        steps: vec![
            StepCall {
                action: "fragile".into(),
                params: [("run_id".into(), text(id))].into(),
                from: Default::default(),
            },
            StepCall {
                action: "record".into(),
                params: [("run_id".into(), text(id)), ("rows".into(), Value::Int(-1))].into(),
                from: Default::default(),
            },
        ],
    }
}

/// Builds the crafted data directory every test here starts from.
fn crafted() -> tempfile::TempDir {
    let dir = data_dir();
    let d = dir.path();
    init_participants(d);
    let a = two_steps("a-in-doubt-with-marker", 1);
    let b = two_steps("b-in-doubt-without-marker", 2);
    let c = stuck_saga("c-stuck");
    let e = two_steps("e-compensating-with-marker", 4);
    let f = two_steps("f-compensating-without-marker", 5);
    let g = two_steps("g-finished", 6);
    let h = two_steps("h-submitted-only", 7);
    let mut records: Vec<Record> = Vec::new();
    for def in [&a, &b, &c, &e, &f, &g, &h] {
        records.push(submitted(def, 10));
    }
    // a: step 0 started and committed in the ledger; the crash lost its outcome.
    records.push(started(&a.id, 0, Forward, 1));
    commit(d, &a, 0, Forward);
    // b: step 0 done; step 1 started, never committed.
    records.extend([started(&b.id, 0, Forward, 1), succeeded(&b.id, 0, Forward, 1), started(&b.id, 1, Forward, 1)]);
    commit(d, &b, 0, Forward);
    // c: step 0 done, step 1 failed for good, the compensation of step 0 failed for good.
    records.extend([
        started(&c.id, 0, Forward, 1),
        succeeded(&c.id, 0, Forward, 1),
        started(&c.id, 1, Forward, 1),
        failed(&c.id, 1, Forward, 1, false),
        started(&c.id, 0, Compensate, 1),
        failed(&c.id, 0, Compensate, 1, false),
    ]);
    commit(d, &c, 0, Forward);
    // e and f: step 0 done, step 1 failed for good, the compensation of step 0 in doubt; for e
    // it committed before the crash.
    for def in [&e, &f] {
        records.extend([
            started(&def.id, 0, Forward, 1),
            succeeded(&def.id, 0, Forward, 1),
            started(&def.id, 1, Forward, 1),
            failed(&def.id, 1, Forward, 1, false),
            started(&def.id, 0, Compensate, 1),
        ]);
        commit(d, def, 0, Forward);
    }
    commit(d, &e, 0, Compensate);
    // g: completed before the crash.
    records.extend([
        started(&g.id, 0, Forward, 1),
        succeeded(&g.id, 0, Forward, 1),
        started(&g.id, 1, Forward, 1),
        succeeded(&g.id, 1, Forward, 1),
        finished(&g.id, Outcome::Completed),
    ]);
    commit(d, &g, 0, Forward);
    commit(d, &g, 1, Forward);
    append(d, &records);
    dir
}

fn saga<'a>(plan: &'a Json, id: &str) -> &'a Json {
    plan["sagas"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("{id} not in the plan"))
}

fn step<'a>(plan: &'a Json, id: &str, step: usize, direction: &str) -> &'a Json {
    &saga(plan, id)["steps"][step][direction]
}

/// Every file and its checksum, except SQLite's `-shm` wal-index (it holds no persistent
/// content, and a crafted directory has none anyway).
fn fingerprint_of(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, (u64, u32)> {
    let mut f = fingerprint(dir);
    f.retain(|p, _| !p.to_string_lossy().ends_with("-shm"));
    f
}

/// The dry-run plan says, per saga and step, what recovery will do (marker present → recorded
/// without re-running, absent → re-run, STUCK stays STUCK, compensations continue), and the
/// data directory and every participant file are byte-for-byte unchanged afterwards.
#[test]
fn dry_run_plans_every_saga_and_changes_nothing() {
    let dir = crafted();
    let d = dir.path();
    let before = fingerprint_of(d);
    let out = sagalog(&["replay", "--dry-run", "--json"], d);
    assert!(out.status.success(), "dry-run failed: {}", stderr(&out));
    let plan: Json = serde_json::from_str(&stdout(&out)).expect("the plan is JSON");
    assert_eq!(fingerprint_of(d), before, "a dry run changed the data directory");

    assert_eq!(plan["sagas"].as_array().unwrap().len(), 6, "g is finished: only archived");
    assert_eq!(plan["finished_to_archive"], 1);
    let expect = |id: &str| saga(&plan, id)["expected"].clone();
    assert_eq!(expect("a-in-doubt-with-marker"), "completed");
    assert_eq!(step(&plan, "a-in-doubt-with-marker", 0, "forward")["journaled"], "in_doubt");
    assert_eq!(step(&plan, "a-in-doubt-with-marker", 0, "forward")["marker"], "present");
    assert_eq!(step(&plan, "a-in-doubt-with-marker", 0, "forward")["action"], "record_by_marker");
    assert_eq!(step(&plan, "a-in-doubt-with-marker", 1, "forward")["action"], "run");

    assert_eq!(expect("b-in-doubt-without-marker"), "completed");
    assert_eq!(step(&plan, "b-in-doubt-without-marker", 0, "forward")["action"], "nothing");
    assert_eq!(step(&plan, "b-in-doubt-without-marker", 1, "forward")["marker"], "absent");
    assert_eq!(step(&plan, "b-in-doubt-without-marker", 1, "forward")["action"], "rerun");

    assert_eq!(expect("c-stuck")["stuck"]["step"], 0);
    assert_eq!(saga(&plan, "c-stuck")["status"], "STUCK");
    assert_eq!(step(&plan, "c-stuck", 0, "compensate")["action"], "stuck");

    assert_eq!(expect("e-compensating-with-marker"), "compensated");
    assert_eq!(saga(&plan, "e-compensating-with-marker")["status"], "COMPENSATING");
    assert_eq!(step(&plan, "e-compensating-with-marker", 0, "compensate")["marker"], "present");
    assert_eq!(step(&plan, "e-compensating-with-marker", 0, "compensate")["action"], "record_by_marker");
    assert_eq!(step(&plan, "e-compensating-with-marker", 1, "forward")["action"], "nothing", "never applied");

    assert_eq!(expect("f-compensating-without-marker"), "compensated");
    assert_eq!(step(&plan, "f-compensating-without-marker", 0, "compensate")["marker"], "absent");
    assert_eq!(step(&plan, "f-compensating-without-marker", 0, "compensate")["action"], "rerun");

    assert_eq!(expect("h-submitted-only"), "completed");
    assert_eq!(step(&plan, "h-submitted-only", 0, "forward")["action"], "run");

    let totals = &plan["totals"];
    assert_eq!((totals["unfinished"].as_u64(), totals["stuck"].as_u64()), (Some(6), Some(1)));
    assert_eq!(totals["in_doubt"], 4);
    assert_eq!(totals["settled_by_marker"], 2);

    // The table says the same, and changes nothing either.
    let out = sagalog(&["replay", "--dry-run"], d);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    if std::env::var_os("SAGALOG_SHOW_PLAN").is_some() {
        println!("{table}");
    }
    assert!(table.contains("6 unfinished: 3 will complete, 2 will compensate, 1 stuck, 0 blocked"), "{table}");
    assert!(table.contains("saga c-stuck  STUCK"), "{table}");
    assert!(table.contains("record as done, not re-run"), "{table}");
    assert!(table.contains("RE-RUN"), "{table}");
    assert_eq!(fingerprint_of(d), before, "a dry run changed the data directory");
}

/// Offline replay then a serve-style start ends every saga exactly as a serve-style start
/// alone does, with the same participant effects; the summary counts what it did.
#[test]
fn offline_replay_then_start_equals_start_alone() {
    let dir = crafted();
    let twin = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), twin.path());

    let out = sagalog(&["replay", "--json"], dir.path());
    // The stuck saga stays stuck: a problem for an operator, so exit 1.
    assert_eq!(out.status.code(), Some(1), "stdout {} stderr {}", stdout(&out), stderr(&out));
    let summary: Json = serde_json::from_str(&stdout(&out)).expect("summary is JSON");
    assert_eq!(summary["unfinished"], 6);
    assert_eq!(summary["completed"], 3, "{summary}");
    assert_eq!(summary["compensated"], 2, "{summary}");
    assert_eq!(summary["stuck"], serde_json::json!(["c-stuck"]));
    assert_eq!(summary["settled_by_marker"], 2, "{summary}");
    assert!(summary["still_running"].as_array().unwrap().is_empty());

    let after_replay = settle(dir.path());
    let alone = settle(twin.path());
    assert_eq!(after_replay, alone);
    assert_eq!(after_replay["a-in-doubt-with-marker"], "COMPLETED");
    assert_eq!(after_replay["c-stuck"], "STUCK");
    assert_eq!(after_replay["f-compensating-without-marker"], "COMPENSATED");
    assert_eq!(ledger_rows(dir.path()), ledger_rows(twin.path()));
    assert_eq!(artefacts(dir.path()), artefacts(twin.path()));
    for rows in ledger_rows(dir.path()).values() {
        assert_eq!(*rows, 1, "no effect applied twice");
    }

    // A second replay finds nothing left to do but the STUCK saga.
    let out = sagalog(&["replay", "--json"], dir.path());
    let again: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((again["unfinished"].as_u64(), again["steps_run"].as_u64()), (Some(1), Some(0)), "{again}");
}

/// While a server holds the data directory, replay refuses with exit 2 and says who holds it;
/// the read-only tools (dry run, audit) say who holds it and that they would ask that server
/// online, which this configuration gives no address for (exit 2, naming `--http`).
#[test]
fn refuses_while_the_data_directory_is_held() {
    let dir = crafted();
    let held = sagalog::data_dir::DataDir::open(dir.path(), sagalog::data_dir::Access::Exclusive).unwrap();
    for args in [&["replay", "--dry-run"][..], &["replay"][..], &["audit"][..]] {
        let out = sagalog(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("in use by another sagalog process"), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("pid {}", std::process::id())), "{}", stderr(&out));
        if args != ["replay"] {
            assert!(
                stderr(&out).contains("names no HTTP port") && stderr(&out).contains("--http URL"),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
    drop(held);
}

/// Bad input is an error naming what is wrong, exit 2; a corrupt journal is exit 1; nothing
/// panics and a missing directory is not created.
#[test]
fn bad_input_is_reported_not_panicked_on() {
    let missing = tempfile::tempdir().unwrap().path().join("nope");
    let out = sagalog(&["replay", "--dry-run"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a sagalog data directory"), "{}", stderr(&out));
    assert!(!missing.exists(), "a missing data directory must not be created");

    let dir = crafted();
    for bad in ["yesterday-ish", "2026-13-45T00:00:00Z", "12abc"] {
        let out = sagalog(&["replay", "--compensate-since", bad], dir.path());
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--compensate-since"), "{bad}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }

    // Flip a byte in the middle of the first segment: corruption, exit 1 like `wal verify`.
    let segment = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let out = sagalog(&["replay", "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
}

/// The last LSN of the journal of `dir`, from `sagalog wal verify --json`.
fn last_lsn(dir: &Path) -> u64 {
    let out = sagalog(&["wal", "verify", "--json"], dir);
    let v: Json = serde_json::from_str(&stdout(&out)).unwrap();
    v["last_lsn"].as_u64().unwrap()
}

/// `--compensate-since LSN`: without `--yes` it lists exactly the sagas completed after the
/// point and changes nothing; with it, those sagas are compensated (effects undone, journaled
/// like any compensation), earlier ones stay completed, the audit agrees, and a rerun finds
/// nothing more to undo.
#[test]
fn compensate_since_undoes_exactly_the_sagas_completed_after_the_point() {
    let dir = data_dir();
    let d = dir.path();
    init_participants(d);
    append(d, &(0..4).map(|n| submitted(&two_steps(&format!("early{n}"), n), 10)).collect::<Vec<_>>());
    assert!(sagalog(&["replay"], d).status.success());
    let point = last_lsn(d);
    let mut late: Vec<Record> = (0..3).map(|n| submitted(&two_steps(&format!("late{n}"), n), 20)).collect();
    late.push(submitted(&two_steps("late-failed", -1), 20));
    append(d, &late);
    assert!(sagalog(&["replay"], d).status.success());

    let before = fingerprint(d);
    let out = sagalog(&["replay", "--compensate-since", &point.to_string()], d);
    assert_eq!(out.status.code(), Some(2), "refuses without --yes: {}", stderr(&out));
    assert!(stderr(&out).contains("without --yes"), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains("3 completed sagas will be compensated"), "{listed}");
    for id in ["late0", "late1", "late2"] {
        assert!(listed.contains(id), "{listed}");
    }
    assert!(!listed.contains("early") && !listed.contains("late-failed"), "{listed}");
    let preview = sagalog(&["replay", "--dry-run", "--yes", "--compensate-since", &point.to_string()], d);
    assert!(preview.status.success(), "an asked-for preview succeeds: {}", stderr(&preview));
    assert_eq!(stdout(&preview), listed);
    assert_eq!(fingerprint(d), before, "the preview changed the data directory");

    let out = sagalog(&["replay", "--yes", "--compensate-since", &point.to_string()], d);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("reopened 3 completed sagas"), "{}", stdout(&out));
    let statuses = settle(d);
    for n in 0..4 {
        assert_eq!(statuses[&format!("early{n}")], "COMPLETED");
    }
    for n in 0..3 {
        assert_eq!(statuses[&format!("late{n}")], "COMPENSATED");
    }
    let rows = ledger_rows(d);
    assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), ["early0", "early1", "early2", "early3"]);
    assert_eq!(artefacts(d), ["early0", "early1", "early2", "early3"]);
    let audit = sagalog(&["audit"], d);
    assert!(audit.status.success(), "{}", stdout(&audit));

    let out = sagalog(&["replay", "--yes", "--compensate-since", &point.to_string()], d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 completed sagas will be compensated"), "{}", stdout(&out));
}

/// Completed sagas whose journal segments were deleted after a checkpoint are only in the
/// index, without the step parameters a compensation needs: `--compensate-since TIME` names
/// them, compensates the others, and exits 1.
#[test]
fn compensate_since_reports_sagas_only_in_the_index() {
    let dir = data_dir();
    let d = dir.path();
    let config =
        CONFIG.replace("[journal]\nsync = \"always\"", "[journal]\nsync = \"always\"\nsegment_bytes_max = 4096");
    std::fs::write(d.join("sagalog.toml"), config).unwrap();
    init_participants(d);
    append(d, &(0..6).map(|n| submitted(&two_steps(&format!("old{n}"), n), 10)).collect::<Vec<_>>());
    assert!(sagalog(&["replay"], d).status.success());
    append(d, &[submitted(&two_steps("recent", 1), 20)]);
    assert!(sagalog(&["replay"], d).status.success());

    let out = sagalog(&["replay", "--yes", "--compensate-since", "1h"], d);
    assert_eq!(out.status.code(), Some(1), "{} {}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("CANNOT be compensated"), "{text}");
    let statuses = settle(d);
    assert_eq!(statuses["recent"], "COMPENSATED");
    let archived_only = statuses.values().filter(|s| *s == "COMPLETED").count();
    assert!(archived_only > 0, "the test needs sagas whose segments were deleted: {statuses:?}");
    assert!(text.contains(&format!("{archived_only} completed sagas after the point CANNOT")), "{text}");
}

/// A build without DuckDB refuses `export` with a message saying why, exit 2.
#[cfg(not(feature = "duckdb"))]
#[test]
fn export_without_duckdb_says_so() {
    let dir = crafted();
    let target = dir.path().join("history.duckdb");
    let out = sagalog(&["export", "--duckdb", target.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("without DuckDB support"), "{}", stderr(&out));
    assert!(!target.exists());
}

/// A config that no longer declares an action: recovery fails that step for good (its saga
/// compensates), and the plan says so instead of looping or guessing.
#[test]
fn dry_run_with_an_action_removed_from_the_config() {
    let dir = crafted();
    let d = dir.path();
    let start = CONFIG.find("[actions.write]").unwrap();
    let end = CONFIG.find("[actions.fragile]").unwrap();
    let config = format!("{}{}", &CONFIG[..start], &CONFIG[end..]);
    let path = d.join("without-write.toml");
    std::fs::write(&path, config).unwrap();
    let out = sagalog(&["replay", "--dry-run", "--json", "--config", path.to_str().unwrap()], d);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Json = serde_json::from_str(&stdout(&out)).unwrap();
    for id in ["b-in-doubt-without-marker", "h-submitted-only"] {
        assert_eq!(saga(&plan, id)["expected"], "compensated", "{id}: {:#}", saga(&plan, id));
        assert_eq!(saga(&plan, id)["steps"][1]["participant"], Json::Null);
    }
    assert_eq!(step(&plan, "h-submitted-only", 0, "compensate")["action"], "run");
}
